"""`python -m tools_service`: runs the service until SIGTERM or SIGINT."""

from tools_service.server import main

if __name__ == "__main__":
    main()
