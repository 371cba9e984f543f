"""Workers as separate hosts on one machine: each host a Linux network namespace on a private
bridge, Redis in a namespace of its own, so a host's (or Redis's) link can be cut and healed.

``harness`` builds the network and runs processes in it, ``hostjobs`` holds the jobs (the
fault suite's jobs and ledger, plus a no-op), ``producer`` is a producer run on a host,
``throughput`` drains a backlog with 1, 2 and 3 hosts. The tests skip, saying why, where
network namespaces cannot be made (not root, no ``ip``); CI runs them as root.
"""
