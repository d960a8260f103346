-- kanin's outbox and inbox tables. Run by `kanin outbox init` (or Outbox.init()): every
-- statement is safe to run again, on an empty database or one an older kanin made.

create table if not exists kanin_outbox (
    id bigserial primary key,
    message_id text not null,
    exchange text not null,
    routing_key text not null,
    body bytea not null,
    properties jsonb not null,
    ordering_key text,
    created_at timestamptz not null default now(),
    sent_at timestamptz
);
-- tries that failed (the broker down, or the message unroutable), and the last error
alter table kanin_outbox add column if not exists attempts integer not null default 0;
alter table kanin_outbox add column if not exists error text;

-- what the relay reads: the rows still to send, the fewest tries first, then oldest
create index if not exists kanin_outbox_pending on kanin_outbox (attempts, id)
    where sent_at is null;
-- what per-key order looks at: the earlier rows of the same key
create index if not exists kanin_outbox_pending_key on kanin_outbox (ordering_key, id)
    where sent_at is null and ordering_key is not null;
-- what the retention deletes
create index if not exists kanin_outbox_sent on kanin_outbox (sent_at)
    where sent_at is not null;

-- handled messages: one row per consumer and idempotency key (hashed together), written
-- in the handler's transaction
create table if not exists kanin_inbox (
    key text primary key,
    handled_at timestamptz not null default now()
);
create index if not exists kanin_inbox_handled on kanin_inbox (handled_at);
