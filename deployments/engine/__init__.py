"""The online engine inside each processor replica: credit-based intake from the fair queue,
stages with their own limits (fetch, decode, models), leases with heartbeats, reclaim and
dead letters, and the backlog autoscaling policy (``docs/engine.md``)."""
