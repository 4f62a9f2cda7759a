"""Local stand-ins for production services, shared by `make run`, the tests and the benchmarks."""
