"""Sessions held in memory: their state, the outbox every event goes through, resume, the
in-flight transcript and its batched persistence, and the service clients call."""
