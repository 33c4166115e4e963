"""``python -m dmreg.train.v2igan --data ../shared/data --out PATH --steps N``: see train.py."""

from dmreg.train.v2igan.train import main

if __name__ == "__main__":
    main()
