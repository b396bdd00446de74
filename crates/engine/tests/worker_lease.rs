//! The worker keeps the lease of a delivery it is still sending: a receiver
//! slower than the destination's `lease` must not get the message twice
//! (another worker, or node, taking the "expired" delivery over while the
//! first attempt is still waiting for the answer).

mod ops_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ops_support::{Client, Harness, adt, eventually, field, stored};
use store::DeliveryState;
use tokio::net::TcpListener;

#[tokio::test]
async fn a_delivery_slower_than_its_lease_is_sent_once() {
    // Answers each request 2.5 s after it came: longer than two leases.
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::post(move || {
            let counted = Arc::clone(&counted);
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2500)).await;
                "ok"
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let body = format!(
        r#"
[channels.adt-in.source]
type = "mllp"
listen = "127.0.0.1:0"
[[channels.adt-in.destinations]]
name = "slow"
type = "http"
url = "{url}"
lease = "1s"
workers = 2
"#
    );
    let h = Harness::start(&body).await;
    let mut c = Client::connect(h.addr("adt-in")).await;
    c.send(&[&adt("SLOW1", "MRN1")]).await;
    assert_eq!(field(&c.read().await.unwrap(), "MSA-1"), "AA");
    let id = stored(h.store(), "SLOW1").await[0].id;
    eventually("the delivery is recorded as sent", async || {
        h.store().get_message(id).await.unwrap().unwrap().deliveries[0].state == DeliveryState::Sent
    })
    .await;
    let delivery = h.store().get_message(id).await.unwrap().unwrap().deliveries.remove(0);
    let outcomes: Vec<&str> = delivery.attempt_log.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["sent"], "one attempt, its lease held until it answered");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "the receiver got the message once");
    h.stop().await;
}
