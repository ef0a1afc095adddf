"""The test suite: the real app on a real port, driven through its real interfaces."""
