"""`python -m retrieval_service` runs the server."""

from retrieval_service.server import main

if __name__ == "__main__":
    main()
