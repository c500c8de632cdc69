"""The benchmark harness behind bench/run: processes, data, figures and reports."""
