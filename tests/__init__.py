"""The test suite, a package so that test files in subdirectories may share basenames (tests/triton/test_conv.py, ...)."""
