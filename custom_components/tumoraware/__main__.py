"""``python -m tumoraware`` runs the command line."""

from tumoraware.cli import main

if __name__ == "__main__":
    main()
