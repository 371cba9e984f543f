"""The fault-injection suite: real worker, server and Redis processes killed, stopped and cut
off from their store while jobs run, with a ledger of every attempt to check the guarantees.

``faultjobs`` holds the jobs (and the middleware that writes the ledger), ``ledger`` reads the
ledger back, ``harness`` starts and kills processes and stores, ``scenarios`` runs each fault
scenario and returns a :class:`~faults.scenarios.Report`. The tests here assert on the reports
of small runs; ``benchmarks/faults.py`` runs the same scenarios at a larger size and prints
their figures.
"""
