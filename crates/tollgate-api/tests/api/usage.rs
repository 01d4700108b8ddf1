//! `/v1/usage` and `/v1/team/usage`: ranges, shapes, roll-up and deleted members.

use serde_json::{json, Value};

use super::harness::Harness;

#[tokio::test]
async fn own_usage_by_product_and_day() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let (cid, ckey) = h.child(&pkey, "c@example.com").await;
    h.record(&cid, &pid, "whois", "whois", "2026-12-04", 300, 700)
        .await;
    h.record(&cid, &pid, "whois", "whois", "2026-12-01", 1, 1)
        .await;
    h.record(&cid, &pid, "reverse-whois", "drs", "2026-12-02", 2, 20)
        .await;
    h.record(&cid, &pid, "whois", "whois", "2026-11-30", 1000, 1000)
        .await;
    h.record(&pid, &pid, "whois", "whois", "2026-12-02", 9, 9)
        .await;

    // Default range: the first of the month to today.
    let r = h.get("/v1/usage", &ckey).await;
    let b = r.expect(200);
    assert_eq!(
        *b,
        json!({
            "account_id": cid,
            "from": "2026-12-01",
            "to": "2026-12-04",
            "total": {"requests": 303, "credits": 721},
            "by_product": {
                "reverse-whois": {"requests": 2, "credits": 20},
                "whois": {"requests": 301, "credits": 701}
            },
            "by_day": [
                {"date": "2026-12-01", "product": "whois", "requests": 1, "credits": 1},
                {"date": "2026-12-02", "product": "reverse-whois", "requests": 2, "credits": 20},
                {"date": "2026-12-04", "product": "whois", "requests": 300, "credits": 700}
            ]
        })
    );

    let r = h
        .get("/v1/usage?from=2026-11-30&to=2026-11-30", &ckey)
        .await;
    assert_eq!(
        r.expect(200)["total"],
        json!({"requests": 1000, "credits": 1000})
    );

    // A parent's own usage is its own, not the roll-up.
    let r = h.get("/v1/usage", &pkey).await;
    assert_eq!(r.expect(200)["total"], json!({"requests": 9, "credits": 9}));
}

#[tokio::test]
async fn bad_ranges() {
    let h = Harness::new();
    let (pid, key) = h.parent("p@example.com", true).await;
    h.record(&pid, &pid, "whois", "whois", "2026-12-01", 2, 3)
        .await;
    for path in ["/v1/usage", "/v1/team/usage"] {
        for q in [
            "from=2026-12-1",
            "from=2026-13-01",
            "to=2026-02-30",
            "from=yesterday",
            "from=%ff",
        ] {
            h.get(&format!("{path}?{q}"), &key)
                .await
                .expect_error(400, "invalid_request");
        }
        // Any two well-formed dates are a range the schema allows, so they are answered: over
        // years, to the calendar's ends, or inverted (empty: nothing is in it).
        for (q, credits) in [
            ("from=2024-01-01&to=2025-01-01", 0),
            ("from=0001-01-01&to=9999-12-31", 3),
        ] {
            let r = h.get(&format!("{path}?{q}"), &key).await;
            assert_eq!(r.expect(200)["total"]["credits"], credits, "{q}");
        }
        let r = h
            .get(&format!("{path}?from=2026-12-05&to=2026-12-04"), &key)
            .await;
        let b = r.expect(200);
        assert_eq!(
            (&b["from"], &b["to"]),
            (&json!("2026-12-05"), &json!("2026-12-04"))
        );
        assert_eq!(b["total"], json!({"requests": 0, "credits": 0}));
    }
}

#[tokio::test]
async fn team_usage_rolls_up_members_and_keeps_the_deleted() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let (c1, _) = h.child(&pkey, "one@example.com").await;
    let (c2, _) = h.child(&pkey, "two@example.com").await;
    h.record(&pid, &pid, "whois", "whois", "2026-12-01", 10, 10)
        .await;
    h.record(&c1, &pid, "whois", "whois", "2026-12-02", 300, 700)
        .await;
    h.record(&c2, &pid, "whois", "whois", "2026-12-03", 50, 400)
        .await;
    h.record(&c2, &pid, "reverse-whois", "drs", "2026-12-03", 5, 60)
        .await;
    // Outside the range: neither in the range's totals nor in its pools.
    h.record(&c1, &pid, "whois", "whois", "2026-10-01", 1, 1)
        .await;

    h.delete(&format!("/v1/team/members/{c2}"), &pkey)
        .await
        .expect(204);

    let r = h
        .get("/v1/team/usage?from=2026-12-01&to=2026-12-04", &pkey)
        .await;
    let b = r.expect(200).clone();
    assert_eq!(b["parent_id"], pid.as_str());
    assert_eq!(b["from"], "2026-12-01");
    assert_eq!(b["to"], "2026-12-04");
    let members = b["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    assert_eq!(members[0]["account_id"], pid.as_str());
    assert_eq!(members[0]["role"], "parent");
    assert_eq!(members[0]["email"], "p@example.com");
    assert_eq!(members[1]["account_id"], c1.as_str());
    assert_eq!(members[1]["status"], "active");
    assert_eq!(
        members[1]["total"],
        json!({"requests": 300, "credits": 700})
    );
    assert_eq!(members[2]["account_id"], c2.as_str());
    assert_eq!(members[2]["status"], "deleted");
    assert_eq!(members[2]["role"], "child");
    assert_eq!(
        members[2]["by_product"],
        json!({"reverse-whois": {"requests": 5, "credits": 60}, "whois": {"requests": 50, "credits": 400}})
    );
    assert_eq!(members[2]["total"], json!({"requests": 55, "credits": 460}));

    let sum = |field: &str| -> u64 {
        members
            .iter()
            .map(|m| m["total"][field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(b["total"]["requests"], sum("requests"));
    assert_eq!(b["total"]["credits"], sum("credits"));
    assert_eq!(b["total"], json!({"requests": 365, "credits": 1170}));

    // The range's credits per pool (parent and deleted member included): they add up to the total.
    assert_eq!(
        b["pools"],
        json!({
            "whois": {"included": 1000, "used": 1110, "overage": 110},
            "drs": {"included": 50, "used": 60, "overage": 10}
        })
    );
}

#[tokio::test]
async fn team_pools_count_the_range_only() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", true).await;
    let (c1, _) = h.child(&pkey, "one@example.com").await;
    let (c2, _) = h.child(&pkey, "two@example.com").await;
    // Day one: 1200 whois credits (over the 1000 included) and 30 drs.
    h.record(&c1, &pid, "whois", "whois", "2026-12-01", 100, 900)
        .await;
    h.record(&pid, &pid, "whois", "whois", "2026-12-01", 3, 300)
        .await;
    h.record(&c2, &pid, "reverse-whois", "drs", "2026-12-01", 3, 30)
        .await;
    // Day two: 710 whois credits, as in SPEC's example.
    h.record(&c1, &pid, "whois", "whois", "2026-12-02", 300, 700)
        .await;
    h.record(&pid, &pid, "whois", "whois", "2026-12-02", 10, 10)
        .await;
    h.delete(&format!("/v1/team/members/{c2}"), &pkey)
        .await
        .expect(204);

    let day_two = h
        .get("/v1/team/usage?from=2026-12-02&to=2026-12-02", &pkey)
        .await;
    let b = day_two.expect(200);
    assert_eq!(b["total"], json!({"requests": 310, "credits": 710}));
    assert_eq!(
        b["pools"],
        json!({
            "whois": {"included": 1000, "used": 710, "overage": 0},
            "drs": {"included": 50, "used": 0, "overage": 0}
        })
    );

    let day_one = h
        .get("/v1/team/usage?from=2026-12-01&to=2026-12-01", &pkey)
        .await;
    assert_eq!(
        day_one.expect(200)["pools"],
        json!({
            "whois": {"included": 1000, "used": 1200, "overage": 200},
            "drs": {"included": 50, "used": 30, "overage": 0}
        })
    );

    let both = h
        .get("/v1/team/usage?from=2026-12-01&to=2026-12-02", &pkey)
        .await;
    assert_eq!(
        both.expect(200)["pools"]["whois"],
        json!({"included": 1000, "used": 1910, "overage": 910})
    );
    // GET /v1/subscriptions still shows the all-time use.
    let subs = h.get("/v1/subscriptions", &pkey).await;
    let whois = subs.expect(200)["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pool"] == "whois")
        .unwrap()
        .clone();
    assert_eq!(whois["used"], 1910);
}

#[tokio::test]
async fn team_usage_of_an_empty_team() {
    let h = Harness::new();
    let (pid, pkey) = h.parent("p@example.com", false).await;
    let r = h.get("/v1/team/usage", &pkey).await;
    let b = r.expect(200);
    assert_eq!(b["members"].as_array().unwrap().len(), 1);
    assert_eq!(b["members"][0]["account_id"], pid.as_str());
    assert_eq!(b["total"], json!({"requests": 0, "credits": 0}));
    assert_eq!(
        b["pools"]["whois"],
        json!({"included": 1000, "used": 0, "overage": 0})
    );
    assert_eq!(
        b["members"][0]["by_product"],
        Value::Object(Default::default())
    );
}
