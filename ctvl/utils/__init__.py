"""Small helpers shared by ctvl's batch jobs (error logs, ...)."""
