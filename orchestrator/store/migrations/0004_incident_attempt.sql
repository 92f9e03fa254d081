-- The attempt that raised a task's incident (the task's own attempt moves on when retried).
ALTER TABLE incidents ADD COLUMN attempt integer;
