//! The store's one integration suite: every behaviour runs on SQLite (temp
//! dir) and, when PLEXUS_TEST_POSTGRES_URL / PLEXUS_TEST_MYSQL_URL are set,
//! on PostgreSQL and MariaDB (a database of its own per test, dropped at the
//! end). Plus the crash test, the ordering property test, the multi-process
//! claim test and the query-plan checks.

mod batch;
mod behaviour;
mod cluster;
mod crash;
mod ordering;
mod poll_checkpoints;
mod retry_after;
mod support;
mod sync_jobs;
mod tokens;

on_every_backend!(
    accept_stores_message_with_metadata_and_deliveries,
    duplicate_returns_the_original_ack_and_creates_nothing,
    concurrent_duplicates_store_one_message,
    concurrent_accepts_are_all_stored,
    invalid_requests_are_rejected_as_permanent,
    claim_takes_only_the_head_of_each_order_key,
    claim_respects_max_and_returns_oldest_first,
    transient_failures_retry_with_backoff_then_block_the_key,
    dead_letter_policy_moves_the_head_aside,
    expired_lease_is_claimed_again_and_stale_completion_rejected,
    completion_after_expiry_is_rejected_even_if_not_reclaimed,
    filtered_deliveries_are_never_claimed,
    replay_requeues_with_an_audit_event,
    replayed_head_never_overtakes_a_delivery_in_flight,
    record_audit_and_list_newest_first,
    search_filters_and_keyset_pagination,
    counts_per_channel_destination_and_state,
    retention_removes_contents_of_finished_messages_only,
    changes_tick_when_work_arrives,
    close_refuses_later_requests,
    reopened_store_keeps_messages_queue_and_leases,
    api_tokens_create_find_list_revoke_and_touch,
    accept_many_answers_each_in_order_and_keeps_arrival_order,
    retry_after_holds_the_retry_back,
);
