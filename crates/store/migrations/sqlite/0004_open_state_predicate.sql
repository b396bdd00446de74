-- The queue's partial indexes say "unfinished" as three comparisons instead
-- of `state IN ('queued', 'in_flight', 'error')`. SQLite evaluates an IN
-- list of more than two constants through a temporary B-tree that it builds
-- again on every execution of a statement, and it evaluates these
-- predicates on every insert into deliveries and every update of a
-- delivery's state (twice, old and new row): two temporary B-trees per
-- accepted delivery, about a tenth of the writer's CPU for a one-message
-- commit (callgrind, docs/benchmarks.md, helper A session 7). The OR form
-- is three comparisons. The claim (`sqlite::CLAIM_CANDIDATES`), which must
-- use these indexes, spells the condition the same way: SQLite uses a
-- partial index only for a query whose WHERE contains the index's condition
-- as written (the plan test checks it).

DROP INDEX deliveries_queue;
CREATE INDEX deliveries_queue ON deliveries (channel, destination, id)
    WHERE state = 'queued' OR state = 'in_flight' OR state = 'error';

DROP INDEX deliveries_queue_key;
CREATE INDEX deliveries_queue_key ON deliveries (channel, destination, queue_key, id)
    WHERE state = 'queued' OR state = 'in_flight' OR state = 'error';
