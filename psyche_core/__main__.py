from psyche_core.cli import main

if __name__ == "__main__":  # worker processes re-import this module; only the parent runs
    main()
