if __name__ == "__main__":
    from icechunk_dask.cli import main

    raise SystemExit(main())
