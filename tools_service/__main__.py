"""`python -m tools_service`."""

from tools_service.server import main

if __name__ == "__main__":
    main()
