"""`python -m agent_service`: runs the service until SIGTERM or SIGINT."""

from agent_service.server import main

if __name__ == "__main__":
    main()
