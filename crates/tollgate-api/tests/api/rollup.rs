//! Property: whatever usage a team's members record, the team total is the sum of the member
//! totals, each member's total is what it recorded, and each pool's use is every member's credits.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::harness::Harness;

const PRODUCTS: [(&str, &str); 3] = [
    ("whois", "whois"),
    ("dns", "whois"),
    ("reverse-whois", "drs"),
];
const DAYS: [&str; 4] = ["2026-12-01", "2026-12-02", "2026-12-03", "2026-12-04"];

fn run(
    deltas: Vec<(usize, usize, usize, u64, u64)>,
    delete: Option<usize>,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let h = Harness::new();
        let (pid, pkey) = h.parent("p@example.com", true).await;
        let mut ids = vec![pid.clone()];
        for i in 0..3 {
            ids.push(h.child(&pkey, &format!("kid{i}@example.com")).await.0);
        }
        let mut want_member: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
        let mut want_pool: BTreeMap<&str, u64> = BTreeMap::new();
        for &(who, product, day, requests, credits) in &deltas {
            let (product, pool) = PRODUCTS[product];
            h.record(&ids[who], &pid, product, pool, DAYS[day], requests, credits)
                .await;
            let m = want_member.entry(ids[who].as_str()).or_default();
            m.0 += requests;
            m.1 += credits;
            *want_pool.entry(pool).or_default() += credits;
        }
        if let Some(c) = delete {
            h.delete(&format!("/v1/team/members/{}", ids[c + 1]), &pkey)
                .await
                .expect(204);
        }

        let r = h
            .get("/v1/team/usage?from=2026-12-01&to=2026-12-04", &pkey)
            .await;
        let b = r.expect(200);
        let members = b["members"].as_array().unwrap();
        prop_assert_eq!(members.len(), 4);
        let (mut req_sum, mut cred_sum) = (0u64, 0u64);
        for m in members {
            let id = m["account_id"].as_str().unwrap();
            let (r, c) = want_member.get(id).copied().unwrap_or_default();
            prop_assert_eq!(m["total"]["requests"].as_u64(), Some(r));
            prop_assert_eq!(m["total"]["credits"].as_u64(), Some(c));
            let by_product: u64 = m["by_product"]
                .as_object()
                .unwrap()
                .values()
                .map(|t| t["credits"].as_u64().unwrap())
                .sum();
            prop_assert_eq!(by_product, c);
            req_sum += m["total"]["requests"].as_u64().unwrap();
            cred_sum += m["total"]["credits"].as_u64().unwrap();
        }
        prop_assert_eq!(b["total"]["requests"].as_u64(), Some(req_sum));
        prop_assert_eq!(b["total"]["credits"].as_u64(), Some(cred_sum));
        prop_assert_eq!(cred_sum, deltas.iter().map(|d| d.4).sum::<u64>());
        for (pool, included) in [("whois", 1000u64), ("drs", 50)] {
            let used = want_pool.get(pool).copied().unwrap_or(0);
            prop_assert_eq!(b["pools"][pool]["used"].as_u64(), Some(used));
            prop_assert_eq!(
                b["pools"][pool]["overage"].as_u64(),
                Some(used.saturating_sub(included))
            );
        }
        // Each member's own view agrees with the team's.
        let own = h
            .get("/v1/usage?from=2026-12-01&to=2026-12-04", &pkey)
            .await;
        prop_assert_eq!(&own.expect(200)["total"], &members[0]["total"]);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn team_total_is_the_sum_of_members(
        deltas in proptest::collection::vec((0usize..4, 0usize..3, 0usize..4, 0u64..1000, 0u64..5000), 0..30),
        delete in proptest::option::of(0usize..3),
    ) {
        run(deltas, delete)?;
    }
}
