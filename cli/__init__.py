"""dmreg's command-line interface (installed as the package ``dmreg_cli``)."""
