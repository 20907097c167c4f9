"""How queued jobs reach `JobWorker.run_job`: procrastinate with PostgreSQL, a loop in this process
with SQLite (`run_jobs`)."""
