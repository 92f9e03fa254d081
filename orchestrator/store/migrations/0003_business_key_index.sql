-- Ending an instance releases its business key by instance id: without this index every
-- batch that ended an instance scanned the whole table.
CREATE INDEX active_business_keys_by_instance ON active_business_keys (instance_id);
