//! The SQL that is the same on the three backends apart from the database
//! type and the placeholder style, written once and stamped out per backend:
//! [`read_side!`] (message view, search, counts, audit trail) and
//! [`write_side!`] (inserting accepted messages, finishing a claim,
//! completions, leases, replay, dead letters, audit, retention). Generic
//! functions over `sqlx::Database` would need a dozen higher-ranked bounds
//! each; the macros keep the SQL readable and the backends provably alike.
//!
//! What differs per backend stays in the backend: transactions and locking
//! (SQLite's single writer, PostgreSQL's advisory locks, MariaDB's lock
//! rows), the head-of-key query that picks claim candidates, and the
//! duplicate-key locks of the accept path.
//!
//! Dynamic lists go through `QueryBuilder`, which writes each backend's own
//! placeholders; fixed SQL is written with `?` and passed through
//! `$placeholders` (identity, or renumbering to `$1, $2 ...` for
//! PostgreSQL).

/// Defines `read_audit_events`, `read_message`, `read_search` and
/// `read_counts` for database `$db` with pool type `$pool`.
macro_rules! read_side {
    ($db:ty, $pool:ty, $placeholders:path) => {
        async fn read_audit_events(pool: &$pool, query: &AuditQuery) -> Result<Vec<AuditEvent>> {
            let mut qb = QueryBuilder::<$db>::new(
                "SELECT id, at, actor, action, message_id, delivery_id, detail FROM audit_events WHERE 1 = 1",
            );
            if let Some(m) = query.message_id {
                qb.push(" AND message_id = ").push_bind(m.0);
            }
            if let Some(before) = query.before_id {
                qb.push(" AND id < ").push_bind(before);
            }
            qb.push(" ORDER BY id DESC LIMIT ").push(page_limit(query.limit, 100));
            let rows: Vec<AuditRow> = qb.build_query_as().fetch_all(pool).await?;
            Ok(rows.into_iter().map(AuditRow::into_event).collect())
        }

        async fn read_message(pool: &$pool, id: MessageId) -> Result<Option<MessageDetail>> {
            // One transaction: a consistent snapshot of the message, its
            // deliveries and their attempts while writers commit.
            let mut tx = pool.begin().await?;
            let mut qb = QueryBuilder::<$db>::new(format!(
                "SELECT {MESSAGE_COLUMNS}, m.raw, m.ack FROM messages m WHERE m.id = "
            ));
            qb.push_bind(id.0);
            let Some(row) = qb.build().fetch_optional(&mut *tx).await? else { return Ok(None) };
            let message = MessageRow::from_row(&row)?;
            let raw: Option<Vec<u8>> = row.try_get("raw")?;
            let ack: Option<Vec<u8>> = row.try_get("ack")?;

            let mut qb = QueryBuilder::<$db>::new("SELECT patient_id FROM message_patients WHERE message_id = ");
            qb.push_bind(id.0).push(" ORDER BY patient_id");
            let patient_ids: Vec<String> = qb.build_query_scalar().fetch_all(&mut *tx).await?;

            let mut qb =
                QueryBuilder::<$db>::new(format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_id = "));
            qb.push_bind(id.0).push(" ORDER BY id");
            let deliveries: Vec<DeliveryRow> = qb.build_query_as().fetch_all(&mut *tx).await?;

            let attempts: Vec<AttemptRow> = if deliveries.is_empty() {
                Vec::new()
            } else {
                let mut qb =
                    QueryBuilder::<$db>::new(format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE delivery_id IN ("));
                let mut sep = qb.separated(", ");
                for d in &deliveries {
                    sep.push_bind(d.id);
                }
                qb.push(") ORDER BY delivery_id, number");
                qb.build_query_as().fetch_all(&mut *tx).await?
            };
            tx.commit().await?;
            assemble_detail(message, raw, ack, patient_ids, deliveries, attempts).map(Some)
        }

        async fn read_search(pool: &$pool, query: &SearchQuery) -> Result<SearchPage> {
            let s = build_search(query)?;
            let sql = $placeholders(&s.sql);
            let mut q = sqlx::query_as::<_, MessageRow>(AssertSqlSafe(sql));
            for p in s.params {
                q = match p {
                    Param::I64(v) => q.bind(v),
                    Param::Text(v) => q.bind(v),
                    Param::Uuid(v) => q.bind(v),
                };
            }
            let mut conn = pool.acquire().await?;
            let rows = q.fetch_all(&mut *conn).await?;
            let ids: Vec<Uuid> = rows.iter().take(s.limit).map(|r| r.id).collect();
            let summaries = if ids.is_empty() {
                Vec::new()
            } else {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT id, message_id, destination, state, attempts FROM deliveries WHERE message_id IN (",
                );
                let mut sep = qb.separated(", ");
                for id in &ids {
                    sep.push_bind(*id);
                }
                qb.push(") ORDER BY id");
                qb.build_query_as::<DeliverySummaryRow>().fetch_all(&mut *conn).await?
            };
            Ok(finish_page(rows, s.limit, group_summaries(summaries)?))
        }

        async fn read_counts(pool: &$pool) -> Result<Vec<StateCount>> {
            let rows: Vec<CountRow> = sqlx::query_as(
                "SELECT channel, destination, state, COUNT(*) AS n FROM deliveries \
                 GROUP BY channel, destination, state ORDER BY channel, destination, state",
            )
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(CountRow::into_count).collect()
        }
    };
}

/// The identity, for backends whose placeholders are `?`.
pub(crate) fn question_marks(sql: &str) -> String {
    sql.to_owned()
}

/// Defines the shared write functions for database `$db` on connection type
/// `$conn`: `lookup_originals`, `insert_messages`, `claim_with`,
/// `complete`, `extend`, `replay`, `dead_letter`, `insert_audit` and
/// `retention`. Each runs on a connection already inside the caller's
/// transaction. `$for_update` is appended to reads of rows about to be
/// changed (`" FOR UPDATE"`, or `""` on SQLite, whose writer is alone), and
/// `$skip_locked` to reads that may pass over rows another transaction is
/// changing (`" FOR UPDATE SKIP LOCKED"` or `""`).
macro_rules! write_side {
    ($db:ty, $conn:ty, $placeholders:path, $for_update:expr, $skip_locked:expr) => {
        /// Rows per multi-row INSERT (at most 15 columns: 960 parameters).
        const INSERT_CHUNK: usize = 64;
        /// Values per `IN (...)` list.
        const IN_CHUNK: usize = 500;

        fn sql(s: &str) -> AssertSqlSafe<String> {
            AssertSqlSafe($placeholders(s))
        }

        /// Stored messages within the duplicate window that share a control
        /// id with the batch (channel and sender are matched in Rust).
        #[allow(dead_code)] // PostgreSQL has its own, see postgres::originals
        async fn lookup_originals(conn: &mut $conn, messages: &[&NewMessage], cutoff: i64) -> Result<Vec<OriginalRow>> {
            let mut existing = Vec::new();
            for chunk in control_ids(messages).chunks(IN_CHUNK) {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT id, channel, sender_key, control_id, received_at, ack FROM messages WHERE control_id IN (",
                );
                let mut sep = qb.separated(", ");
                for cid in chunk {
                    sep.push_bind(*cid);
                }
                qb.push(") AND received_at >= ").push_bind(cutoff);
                existing.extend(qb.build_query_as::<OriginalRow>().fetch_all(&mut *conn).await?);
            }
            Ok(existing)
        }

        /// Plans a batch of accepts and inserts the new messages, their
        /// patient identifiers and deliveries with multi-row INSERTs.
        /// Returns each message's answer and whether a queued delivery was
        /// created.
        // PostgreSQL inserts with UNNEST arrays in one statement instead.
        #[allow(dead_code)]
        async fn insert_batch(
            conn: &mut $conn,
            messages: &[&NewMessage],
            now: DateTime<Utc>,
            window: Duration,
        ) -> Result<(Vec<Accepted>, bool)> {
            let existing = lookup_originals(conn, messages, window_start(now, window)).await?;
            let plans = plan_batch(messages, existing);
            let inserts: Vec<&Prepared<'_>> =
                plans.iter().filter_map(|p| if let Plan::Insert(p) = p { Some(p) } else { None }).collect();
            insert_messages(conn, &inserts, to_micros(now)).await?;
            let queued = inserts.iter().any(|p| p.has_queued());
            let answers = plans
                .into_iter()
                .map(|p| match p {
                    Plan::Insert(p) => Accepted::Stored { id: MessageId(p.id) },
                    Plan::Duplicate(d) => d,
                })
                .collect();
            Ok((answers, queued))
        }

        /// Starts the next statement: a builder of its own, or (`chain`,
        /// SQLite only) appended after `; ` to the last builder, so that a
        /// whole batch runs in one call.
        fn next_statement<'s>(statements: &'s mut Vec<QueryBuilder<$db>>, chain: bool, head: &str) -> &'s mut QueryBuilder<$db> {
            let separator = if chain && !statements.is_empty() {
                "; "
            } else {
                statements.push(QueryBuilder::<$db>::new(""));
                ""
            };
            let last = statements.len() - 1;
            let qb = &mut statements[last];
            qb.push(separator).push(head);
            qb
        }

        /// Appends the INSERT statements for `inserts` (messages, patient
        /// identifiers, deliveries; 64 rows per statement) to `statements`.
        fn push_inserts<'q>(statements: &mut Vec<QueryBuilder<$db>>, chain: bool, inserts: &[&Prepared<'q>], now: i64) {
            for chunk in inserts.chunks(INSERT_CHUNK) {
                let qb = next_statement(statements, chain,
                    "INSERT INTO messages (id, channel, received_at, accepted_at, peer_addr, content_type, size, sha256, \
                     control_id, sender_key, message_type, event, order_key, ack, raw) ",
                );
                qb.push_values(chunk, |mut b, p| {
                    let m = p.message;
                    b.push_bind(p.id)
                        .push_bind(&m.channel)
                        .push_bind(to_micros(m.received_at))
                        .push_bind(now)
                        .push_bind(&m.peer_addr)
                        .push_bind(&m.content_type)
                        .push_bind(p.size())
                        .push_bind(&p.sha256)
                        .push_bind(&m.control_id)
                        .push_bind(&m.sender_key)
                        .push_bind(&m.message_type)
                        .push_bind(&m.event)
                        .push_bind(&m.order_key)
                        .push_bind(&m.ack)
                        .push_bind(&m.raw);
                });
            }

            let patients: Vec<(Uuid, &str)> = inserts
                .iter()
                .flat_map(|p| {
                    let mut ids: Vec<&str> = p.message.patient_ids.iter().map(String::as_str).collect();
                    ids.sort_unstable();
                    ids.dedup();
                    ids.into_iter().map(move |pid| (p.id, pid))
                })
                .collect();
            for chunk in patients.chunks(INSERT_CHUNK * 4) {
                let qb = next_statement(statements, chain, "INSERT INTO message_patients (message_id, patient_id) ");
                qb.push_values(chunk, |mut b, (id, pid)| {
                    b.push_bind(*id).push_bind(*pid);
                });
            }

            let deliveries: Vec<(&Prepared<'_>, &NewDelivery)> =
                inserts.iter().flat_map(|p| p.message.deliveries.iter().map(move |d| (*p, d))).collect();
            for chunk in deliveries.chunks(INSERT_CHUNK) {
                let qb = next_statement(statements, chain,
                    "INSERT INTO deliveries (message_id, channel, destination, queue_key, state, next_attempt_at, \
                     filter_rule, created_at, updated_at) ",
                );
                qb.push_values(chunk, |mut b, (p, d)| {
                    let (state, rule) = match &d.initial {
                        InitialState::Queued => ("queued", None),
                        InitialState::Filtered { rule } => ("filtered", Some(rule.as_str())),
                    };
                    b.push_bind(p.id)
                        .push_bind(&p.message.channel)
                        .push_bind(&d.destination)
                        .push_bind(&p.queue_key)
                        .push_bind(state)
                        .push_bind(now)
                        .push_bind(rule)
                        .push_bind(now)
                        .push_bind(now);
                });
            }
        }

        #[allow(dead_code)] // see insert_batch
        async fn insert_messages(conn: &mut $conn, inserts: &[&Prepared<'_>], now: i64) -> Result<()> {
            let mut statements = Vec::new();
            push_inserts(&mut statements, false, inserts, now);
            for mut qb in statements {
                qb.build().execute(&mut *conn).await?;
            }
            Ok(())
        }

        /// The earliest future moment a delivery of this destination becomes
        /// due (a retry time or a lease expiry).
        async fn next_due(conn: &mut $conn, req: &ClaimRequest, now_us: i64) -> Result<Option<DateTime<Utc>>> {
            let t: Option<i64> = sqlx::query_scalar(sql(NEXT_DUE))
            .bind(&req.channel)
            .bind(&req.destination)
            .bind(now_us)
            .bind(now_us)
            .fetch_one(&mut *conn)
            .await?;
            Ok(t.map(from_micros))
        }

        /// Leases the chosen candidates (already locked where the database
        /// has row locks) and returns them with their messages.
        async fn claim_with(
            conn: &mut $conn,
            req: &ClaimRequest,
            now: DateTime<Utc>,
            candidates: Vec<CandidateRow>,
        ) -> Result<Claim> {
            let now_us = to_micros(now);
            let next_due = if candidates.len() < req.max as usize { next_due(conn, req, now_us).await? } else { None };
            if candidates.is_empty() {
                return Ok(Claim { deliveries: Vec::new(), next_due });
            }

            // A lease that ran out is an attempt that ended without an
            // outcome: log it so the operator sees the crashed or stuck
            // worker.
            for c in candidates.iter().filter(|c| c.state == "in_flight") {
                sqlx::query(sql(
                    "INSERT INTO attempts (delivery_id, number, worker, started_at, finished_at, outcome, reason) \
                     VALUES (?, ?, ?, ?, ?, 'lease_expired', 'lease expired without an outcome')",
                ))
                .bind(c.id)
                .bind(c.total_attempts)
                .bind(c.lease_owner.as_deref().unwrap_or(""))
                .bind(c.lease_started_at.unwrap_or(now_us))
                .bind(c.lease_expires_at.unwrap_or(now_us))
                .execute(&mut *conn)
                .await?;
            }

            let lease = LeaseToken(rand::random::<i64>());
            let expires = to_micros(now + to_delta(req.lease));
            let mut qb = QueryBuilder::<$db>::new("UPDATE deliveries SET state = 'in_flight', lease_token = ");
            qb.push_bind(lease.0)
                .push(", lease_owner = ")
                .push_bind(&req.worker)
                .push(", lease_started_at = ")
                .push_bind(now_us)
                .push(", lease_expires_at = ")
                .push_bind(expires)
                .push(", attempts = attempts + 1, total_attempts = total_attempts + 1, updated_at = ")
                .push_bind(now_us)
                .push(" WHERE id IN (");
            let mut sep = qb.separated(", ");
            for c in &candidates {
                sep.push_bind(c.id);
            }
            qb.push(")");
            qb.build().execute(&mut *conn).await?;

            let mut qb = QueryBuilder::<$db>::new(format!(
                "SELECT {CLAIMED_COLUMNS} FROM deliveries d JOIN messages m ON m.id = d.message_id WHERE d.id IN ("
            ));
            let mut sep = qb.separated(", ");
            for c in &candidates {
                sep.push_bind(c.id);
            }
            qb.push(") ORDER BY d.id");
            let rows: Vec<ClaimedRow> = qb.build_query_as().fetch_all(&mut *conn).await?;
            let deliveries = rows.into_iter().map(|r| r.into_claimed(lease)).collect::<Result<Vec<_>>>()?;
            Ok(Claim { deliveries, next_due })
        }

        const LEASE_ROW: &str = "SELECT state, lease_token, lease_expires_at, lease_owner, lease_started_at, attempts, \
             total_attempts FROM deliveries WHERE id = ?";

        async fn complete(
            conn: &mut $conn,
            delivery: DeliveryId,
            lease: LeaseToken,
            outcome: Outcome,
            policy: RetryPolicy,
            retry_after: Option<Duration>,
            now: DateTime<Utc>,
        ) -> Result<Completion> {
            let now_us = to_micros(now);
            let row: Option<LeaseRow> = sqlx::query_as(sql(&format!("{LEASE_ROW}{}", $for_update))).bind(delivery.0).fetch_optional(&mut *conn).await?;
            let row = match row {
                Some(r) if r.holds(lease, now_us) => r,
                Some(_) => return Err(StoreError::LeaseLost(delivery)),
                None => return Err(StoreError::NotFound(format!("delivery {delivery}"))),
            };
            let attempt = u32::try_from(row.attempts.max(1)).unwrap_or(u32::MAX);
            let t = transition(outcome, attempt, &policy, retry_after, now);
            sqlx::query(sql(
                "UPDATE deliveries SET state = ?, next_attempt_at = COALESCE(?, next_attempt_at), lease_token = NULL, \
                 lease_owner = NULL, lease_started_at = NULL, lease_expires_at = NULL, filter_rule = ?, error_class = ?, \
                 error_reason = ?, transformed = ?, updated_at = ? WHERE id = ?",
            ))
            .bind(t.state.as_str())
            .bind(t.next_attempt_at)
            .bind(&t.filter_rule)
            .bind(t.error_class)
            .bind(&t.error_reason)
            .bind(&t.transformed)
            .bind(now_us)
            .bind(delivery.0)
            .execute(&mut *conn)
            .await?;
            sqlx::query(sql(
                "INSERT INTO attempts (delivery_id, number, worker, started_at, finished_at, outcome, error_class, reason, \
                 response_kind, response_status, response_text) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ))
            .bind(delivery.0)
            .bind(row.total_attempts)
            .bind(row.lease_owner.as_deref().unwrap_or(""))
            .bind(row.lease_started_at.unwrap_or(now_us))
            .bind(now_us)
            .bind(t.attempt_outcome)
            .bind(t.error_class)
            .bind(t.error_reason.as_ref().or(t.filter_rule.as_ref()))
            .bind(t.response.0)
            .bind(t.response.1)
            .bind(&t.response.2)
            .execute(&mut *conn)
            .await?;
            Ok(Completion { state: t.state, next_attempt_at: t.next_attempt_at.map(from_micros) })
        }

        async fn extend(
            conn: &mut $conn,
            delivery: DeliveryId,
            lease: LeaseToken,
            by: Duration,
            now: DateTime<Utc>,
        ) -> Result<DateTime<Utc>> {
            let expires = now + to_delta(by);
            let done = sqlx::query(sql(
                "UPDATE deliveries SET lease_expires_at = ?, updated_at = ? \
                 WHERE id = ? AND state = 'in_flight' AND lease_token = ? AND lease_expires_at > ?",
            ))
            .bind(to_micros(expires))
            .bind(to_micros(now))
            .bind(delivery.0)
            .bind(lease.0)
            .bind(to_micros(now))
            .execute(conn)
            .await?;
            if done.rows_affected() == 1 { Ok(expires) } else { Err(StoreError::LeaseLost(delivery)) }
        }

        async fn replay(conn: &mut $conn, req: ReplayRequest, now: DateTime<Utc>) -> Result<ReplayResult> {
            let now_us = to_micros(now);
            let deleted: Option<Option<i64>> = sqlx::query_scalar(sql(&format!("SELECT contents_deleted_at FROM messages WHERE id = ?{}", $for_update)))
                .bind(req.message_id.0)
                .fetch_optional(&mut *conn)
                .await?;
            match deleted {
                None => return Err(StoreError::NotFound(format!("message {}", req.message_id))),
                Some(Some(_)) => return Err(StoreError::invalid("message_id", "its contents were removed by retention")),
                Some(None) => {}
            }
            let mut qb = QueryBuilder::<$db>::new("SELECT id, state FROM deliveries WHERE message_id = ");
            qb.push_bind(req.message_id.0);
            if let Some(d) = &req.destination {
                qb.push(" AND destination = ").push_bind(d);
            }
            qb.push(" ORDER BY id").push($for_update);
            let rows: Vec<(i64, String)> = qb.build_query_as().fetch_all(&mut *conn).await?;
            if rows.is_empty() {
                return Err(StoreError::NotFound(format!("deliveries of message {}", req.message_id)));
            }
            let (replayed, skipped) = split_replayable(&rows)?;
            for id in &replayed {
                sqlx::query(sql(
                    "UPDATE deliveries SET state = 'queued', attempts = 0, next_attempt_at = ?, lease_token = NULL, \
                     lease_owner = NULL, lease_started_at = NULL, lease_expires_at = NULL, error_class = NULL, \
                     error_reason = NULL, updated_at = ? WHERE id = ?",
                ))
                .bind(now_us)
                .bind(now_us)
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
            }
            let event = replay_audit(&req, &replayed);
            insert_audit(conn, &event, now).await?;
            Ok(ReplayResult { replayed, skipped })
        }

        async fn dead_letter(
            conn: &mut $conn,
            delivery: DeliveryId,
            actor: String,
            reason: Option<String>,
            now: DateTime<Utc>,
        ) -> Result<()> {
            let row: Option<(String, Uuid)> = sqlx::query_as(sql(&format!("SELECT state, message_id FROM deliveries WHERE id = ?{}", $for_update)))
                .bind(delivery.0)
                .fetch_optional(&mut *conn)
                .await?;
            let Some((state, message_id)) = row else {
                return Err(StoreError::NotFound(format!("delivery {delivery}")));
            };
            check_dead_letterable(parse_state(&state)?)?;
            sqlx::query(sql(
                "UPDATE deliveries SET state = 'dead', error_reason = COALESCE(?, error_reason), updated_at = ? WHERE id = ?",
            ))
            .bind(reason.as_deref().map(clip_reason))
            .bind(to_micros(now))
            .bind(delivery.0)
            .execute(&mut *conn)
            .await?;
            let event = NewAuditEvent {
                actor,
                action: "dead_letter".into(),
                message_id: Some(MessageId(message_id)),
                delivery_id: Some(delivery),
                detail: reason,
            };
            validate_audit(&event)?;
            insert_audit(conn, &event, now).await
        }

        async fn insert_audit(conn: &mut $conn, e: &NewAuditEvent, now: DateTime<Utc>) -> Result<()> {
            sqlx::query(sql("INSERT INTO audit_events (at, actor, action, message_id, delivery_id, detail) VALUES (?, ?, ?, ?, ?, ?)"))
                .bind(to_micros(now))
                .bind(&e.actor)
                .bind(&e.action)
                .bind(e.message_id.map(|m| m.0))
                .bind(e.delivery_id.map(|d| d.0))
                .bind(e.detail.as_deref().map(clip_reason))
                .execute(conn)
                .await?;
            Ok(())
        }

        async fn retention(conn: &mut $conn, req: RetentionRequest, now: DateTime<Utc>) -> Result<RetentionBatch> {
            let contents_only = req.mode == RetentionMode::Contents;
            let sql_text = retention_candidates(contents_only, $skip_locked);
            // Locking the candidates (where the database can) keeps a
            // concurrent replay from re-queueing a message whose contents
            // this batch removes: replay locks the message row too.
            let ids: Vec<Uuid> = sqlx::query_scalar(sql(&sql_text))
                .bind(to_micros(req.older_than))
                .bind(i64::from(req.batch_size))
                .fetch_all(&mut *conn)
                .await?;
            if ids.is_empty() {
                return Ok(RetentionBatch { messages: 0, more: false });
            }
            let list = placeholders(ids.len());
            let statements: Vec<String> = if contents_only {
                vec![
                    format!("UPDATE attempts SET response_text = NULL WHERE delivery_id IN (SELECT id FROM deliveries WHERE message_id IN ({list}))"),
                    format!("UPDATE deliveries SET transformed = NULL WHERE message_id IN ({list})"),
                    format!("UPDATE messages SET raw = NULL, ack = NULL, contents_deleted_at = {} WHERE id IN ({list})", to_micros(now)),
                ]
            } else {
                vec![
                    format!("DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE message_id IN ({list}))"),
                    format!("DELETE FROM deliveries WHERE message_id IN ({list})"),
                    format!("DELETE FROM message_patients WHERE message_id IN ({list})"),
                    format!("DELETE FROM messages WHERE id IN ({list})"),
                ]
            };
            for statement in statements {
                let mut q = sqlx::query(sql(&statement));
                for id in &ids {
                    q = q.bind(*id);
                }
                q.execute(&mut *conn).await?;
            }
            let n = ids.len() as u64;
            Ok(RetentionBatch { messages: n, more: n == u64::from(req.batch_size) })
        }

    };
}

pub(crate) use {read_side, write_side};
