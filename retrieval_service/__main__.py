"""`python -m retrieval_service`: runs the service until SIGTERM or SIGINT."""

from retrieval_service.server import main

if __name__ == "__main__":
    main()
