"""What the tests and the benchmarks (bench/) both use to run pushauth for real: child processes that die
with their parent (`processes`), real redis-server, Cluster and Sentinel set-ups (`redis_server`,
`redis_cluster`, `redis_sentinel`), and protocol-faithful fakes of FCM and APNs, alert receivers and the
push sandbox (`fakes`). Installed with pushauth's dev checkout (pyproject's packages.find), so both import
it as `testkit`; it is never imported by pushauth itself.
"""
