"""In-process fakes of the upstream servers, speaking their real wire formats."""
