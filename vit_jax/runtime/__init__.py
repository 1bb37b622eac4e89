"""What a process sets up before it computes: CPU defaults, multi-host start-up, stop requests
(SIGTERM / preemption), readable logs, and the peak FLOP/s of the devices it runs on."""
