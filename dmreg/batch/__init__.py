"""`dmreg batch`: many registrations, resumable, locked, parallel on one machine or a Dask cluster."""
