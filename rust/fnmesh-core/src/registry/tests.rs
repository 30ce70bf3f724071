//! The registry's unit tests.

use super::*;
use crate::meter::CallOutcome;
use std::thread;

fn raw(text: &str) -> RawJson {
    serde_json::value::RawValue::from_string(text.to_owned()).unwrap()
}

fn reg(policy: ConflictPolicy) -> FunctionsRegistry<&'static str> {
    FunctionsRegistry::new(policy)
}

#[test]
fn register_lookup_unregister() {
    let r = reg(ConflictPolicy::Replicate);
    let def = FunctionDef {
        kind: FunctionKind::Worker,
        description: Some("Create an order".into()),
        request_format: Some(raw(r#"{"type":"object"}"#)),
        metadata: Some(raw(r#"{"tags":["orders"]}"#)),
        ..FunctionDef::default()
    };
    assert_eq!(
        r.register("default", "orders::create", "w1", "h1", def)
            .unwrap(),
        Registered::Created
    );
    let info = r.lookup("default", "orders::create").unwrap();
    assert_eq!(info.def.kind, FunctionKind::Worker);
    assert_eq!(
        info.def.request_format.as_ref().unwrap().get(),
        r#"{"type":"object"}"#
    );
    assert_eq!(info.owners, vec![Arc::<str>::from("w1")]);
    assert!(r.lookup("other", "orders::create").is_none());
    assert!(!r.unregister("default", "orders::create", "w2").unwrap());
    assert!(r.unregister("default", "orders::create", "w1").unwrap());
    assert!(r.is_empty());
    assert!(r.remove_owner("w1").is_empty());
}

#[test]
fn same_owner_replaces_in_place_under_both_policies() {
    for policy in [ConflictPolicy::Replicate, ConflictPolicy::Reject] {
        let r = reg(policy);
        r.register("default", "f", "w1", "old", FunctionDef::default())
            .unwrap();
        let lease = r.select("default", "f").unwrap();
        let again = r
            .register("default", "f", "w1", "new", FunctionDef::default())
            .unwrap();
        assert_eq!(again, Registered::Replaced);
        let info = r.lookup("default", "f").unwrap();
        assert_eq!(info.owners.len(), 1);
        assert_eq!(
            info.in_flight, 1,
            "a replacement keeps counting routed calls"
        );
        drop(lease);
        assert_eq!(*r.select("default", "f").unwrap().handler(), "new");
    }
}

#[test]
fn reject_policy_names_the_incumbent() {
    let r = reg(ConflictPolicy::Reject);
    r.register("default", "f", "w1", "a", FunctionDef::default())
        .unwrap();
    let err = r
        .register("default", "f", "w2", "b", FunctionDef::default())
        .unwrap_err();
    assert_eq!(
        err,
        Error::FunctionConflict {
            namespace: "default".into(),
            function_id: "f".into(),
            owner: "w1".into()
        }
    );
    assert_eq!(err.code(), "FUNCTION_NAMESPACE_CONFLICT");
    // Another namespace is another key.
    r.register("billing", "f", "w2", "b", FunctionDef::default())
        .unwrap();
    assert!(r.remove_owner("w2") == vec![FunctionKey::new("billing", "f")]);
    assert_eq!(r.lookup("default", "f").unwrap().owners.len(), 1);
}

#[test]
fn least_in_flight_then_round_robin() {
    let r = reg(ConflictPolicy::Replicate);
    for (owner, h) in [("a", "A"), ("b", "B"), ("c", "C")] {
        r.register("default", "f", owner, h, FunctionDef::default())
            .unwrap();
    }
    // All idle: successive selections rotate.
    let picks: Vec<_> = (0..6)
        .map(|_| *r.select("default", "f").unwrap().handler())
        .collect();
    assert_eq!(picks, ["A", "B", "C", "A", "B", "C"]);
    // Hold one call on A and one on B: C is the least loaded whatever the cursor says.
    let a = r.select("default", "f").unwrap();
    let b = r.select("default", "f").unwrap();
    assert_eq!((*a.handler(), *b.handler()), ("A", "B"));
    for _ in 0..3 {
        let c = r.select("default", "f").unwrap();
        assert_eq!(*c.handler(), "C");
    }
    let mut a = a;
    a.release();
    a.release();
    assert_eq!(a.in_flight(), 0, "release is idempotent");
}

#[test]
fn remove_owner_leaves_other_replicas_serving() {
    let r = reg(ConflictPolicy::Replicate);
    r.register("default", "f", "w1", "1", FunctionDef::default())
        .unwrap();
    r.register("default", "f", "w2", "2", FunctionDef::default())
        .unwrap();
    r.register("default", "g", "w1", "1", FunctionDef::default())
        .unwrap();
    let held = r.select("default", "f").unwrap();
    let removed = r.remove_owner("w1");
    assert_eq!(
        removed,
        vec![
            FunctionKey::new("default", "f"),
            FunctionKey::new("default", "g")
        ]
    );
    assert!(!r.contains("default", "g"));
    for _ in 0..4 {
        assert_eq!(*r.select("default", "f").unwrap().handler(), "2");
    }
    drop(held); // releasing into a removed replica is harmless
    assert_eq!(r.len(), 1);
}

#[test]
fn validation_errors() {
    let r = reg(ConflictPolicy::Replicate);
    let d = FunctionDef::default;
    assert_eq!(
        r.register(" ", "f", "w", "h", d()).unwrap_err(),
        Error::InvalidNamespace
    );
    assert!(matches!(
        r.register("default", "", "w", "h", d()).unwrap_err(),
        Error::InvalidArgument(_)
    ));
    assert!(matches!(
        r.register("default", "f", "", "h", d()).unwrap_err(),
        Error::InvalidArgument(_)
    ));
    assert_eq!(
        r.unregister("", "f", "w").unwrap_err(),
        Error::InvalidNamespace
    );
    assert!("bogus".parse::<ConflictPolicy>().is_err());
    assert!("remote".parse::<FunctionKind>().is_err());
    assert!(r.is_empty());
}

#[test]
fn list_filters_and_order() {
    let r = reg(ConflictPolicy::Replicate);
    let with_desc = |d: &str| FunctionDef {
        description: Some(d.into()),
        ..FunctionDef::default()
    };
    r.register(
        "default",
        "orders::create",
        "w",
        "h",
        with_desc("Create an ORDER"),
    )
    .unwrap();
    r.register(
        "default",
        "billing::charge",
        "w",
        "h",
        with_desc("Charge a card"),
    )
    .unwrap();
    r.register("eu", "orders::create", "w", "h", FunctionDef::default())
        .unwrap();
    let ids = |f: ListFilter<'_>| {
        r.list(f)
            .into_iter()
            .map(|i| format!("{}/{}", i.namespace, i.function_id))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        ids(ListFilter::default()),
        [
            "default/billing::charge",
            "default/orders::create",
            "eu/orders::create"
        ]
    );
    let prefix = ListFilter {
        prefix: Some("orders::"),
        ..ListFilter::default()
    };
    assert_eq!(ids(prefix), ["default/orders::create", "eu/orders::create"]);
    let search = ListFilter {
        search: Some("order"),
        namespace: Some("default"),
        ..ListFilter::default()
    };
    assert_eq!(ids(search), ["default/orders::create"]);
    let by_desc = ListFilter {
        search: Some("CARD"),
        ..ListFilter::default()
    };
    assert_eq!(ids(by_desc), ["default/billing::charge"]);
}

#[test]
fn internal_flag() {
    let def = |m: &str| FunctionDef {
        metadata: Some(raw(m)),
        ..FunctionDef::default()
    };
    assert!(def(r#"{"internal":true}"#).is_internal());
    assert!(!def(r#"{"internal":"yes"}"#).is_internal());
    assert!(!def("[1]").is_internal());
    assert!(!FunctionDef::default().is_internal());
}

#[test]
fn owner_index_follows_unregister_and_remove_owner() {
    let r = reg(ConflictPolicy::Replicate);
    for id in ["a", "b", "c"] {
        r.register("default", id, "w1", "1", FunctionDef::default())
            .unwrap();
    }
    r.register("default", "b", "w2", "2", FunctionDef::default())
        .unwrap();
    assert!(r.unregister("default", "a", "w1").unwrap());
    assert!(!r.unregister("default", "a", "w1").unwrap(), "already gone");
    assert_eq!(
        r.remove_owner("w1"),
        vec![
            FunctionKey::new("default", "b"),
            FunctionKey::new("default", "c")
        ]
    );
    assert!(r.remove_owner("w1").is_empty(), "the index forgot w1");
    assert_eq!(r.len(), 1);
    assert_eq!(*r.select("default", "b").unwrap().handler(), "2");
    assert!(r.unregister("default", "b", "w2").unwrap());
    assert!(r.is_empty() && r.remove_owner("w2").is_empty());
}

#[test]
fn meters_start_at_zero_and_follow_metered_calls() {
    let r = reg(ConflictPolicy::Replicate);
    r.register("default", "f", "w", "h", FunctionDef::default())
        .unwrap();
    let all = r.stats();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].1.count(CallOutcome::Success), 0);
    let (_, stats) = r.select_metered("default", "f", true).unwrap();
    let stats = stats.expect("metered");
    stats.record_unrouted(CallOutcome::Success);
    let (_, again) = r.select_metered("default", "f", true).unwrap();
    assert!(
        Arc::ptr_eq(&stats, &again.unwrap()),
        "one meter per function"
    );
    assert!(r.select_metered("default", "f", false).unwrap().1.is_none());
    assert_eq!(r.stats()[0].1.count(CallOutcome::Success), 1);
}

#[test]
fn plain_definitions_are_shared_and_described_ones_kept() {
    let r = reg(ConflictPolicy::Replicate);
    let def = |description: Option<&str>| FunctionDef {
        kind: FunctionKind::Worker,
        description: description.map(str::to_owned),
        ..FunctionDef::default()
    };
    for id in ["f", "g"] {
        r.register("default", id, "w", "h", def(None)).unwrap();
    }
    let (f, g) = (
        r.def("default", "f").unwrap(),
        r.def("default", "g").unwrap(),
    );
    assert!(Arc::ptr_eq(&f, &g) && f.kind == FunctionKind::Worker);
    r.register("default", "g", "w", "h", def(Some("d")))
        .unwrap();
    assert_eq!(
        r.def("default", "g").unwrap().description.as_deref(),
        Some("d")
    );
    assert_eq!(r.def("default", "f").unwrap().description, None);
    assert!(r.def("default", "h").is_none(), "unknown key");
}

fn batched(replicas: usize) -> FunctionsRegistry<usize> {
    let r = FunctionsRegistry::default().with_replica_batches(true);
    for i in 0..replicas {
        r.register("default", "f", format!("w{i}"), i, FunctionDef::default())
            .unwrap();
    }
    r
}

#[test]
fn batches_fill_one_replica_while_its_calls_are_in_flight() {
    let r = batched(100);
    // 64 calls in flight at once: runs of REPLICA_BATCH on one replica, then the next.
    let held: Vec<_> = (0..64).map(|_| r.select("default", "f").unwrap()).collect();
    let picks: Vec<usize> = held.iter().map(|l| *l.handler()).collect();
    let runs: Vec<&[usize]> = picks.chunk_by(|a, b| a == b).collect();
    assert!(
        runs.iter().all(|run| run.len() == REPLICA_BATCH),
        "{picks:?}"
    );
    let distinct: HashSet<usize> = picks.iter().copied().collect();
    assert_eq!(distinct.len(), 64 / REPLICA_BATCH, "{picks:?}");
    drop(held);
    // One call in flight at a time: every call starts a batch, so idle replicas alternate.
    let picks: Vec<usize> = (0..6)
        .map(|_| *r.select("default", "f").unwrap().handler())
        .collect();
    assert_eq!(picks, [8, 9, 10, 11, 12, 13]);
    // A few replicas keep least-in-flight: two calls in flight run on two replicas.
    let r = batched(BATCHES_ABOVE_REPLICAS);
    let (a, b) = (
        r.select("default", "f").unwrap(),
        r.select("default", "f").unwrap(),
    );
    assert_eq!((*a.handler(), *b.handler()), (0, 1));
    drop((a, b));
    let picks: Vec<usize> = (0..3)
        .map(|_| *r.select("default", "f").unwrap().handler())
        .collect();
    assert_eq!(picks, [2, 3, 4]);
}

#[test]
fn batches_spread_evenly_over_a_window() {
    let r = batched(40);
    let mut counts = [0usize; 40];
    // 1,000 waves of 20 calls in flight, each wave answered before the next.
    for _ in 0..1000 {
        let wave: Vec<_> = (0..20).map(|_| r.select("default", "f").unwrap()).collect();
        for lease in &wave {
            counts[*lease.handler()] += 1;
        }
    }
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    // 20,000 calls over 40 replicas: each within two batches of the even share.
    assert!(
        *min >= 500 - 2 * REPLICA_BATCH && *max <= 500 + 2 * REPLICA_BATCH,
        "{counts:?}"
    );
}

#[test]
fn batches_pass_over_a_replica_with_a_backlog() {
    let r = batched(20);
    // Replica 0 gets a backlog of calls that never end (a slow worker).
    let stuck: Vec<_> = (0..REPLICA_BATCH)
        .map(|_| r.select("default", "f").unwrap())
        .collect();
    assert!(stuck.iter().all(|l| *l.handler() == 0));
    // Calls that end at once take turns over the others, twice around: the slow replica's
    // turn goes to a randomly drawn idle one.
    for _ in 0..50 {
        assert_ne!(*r.select("default", "f").unwrap().handler(), 0);
    }
}

#[test]
fn concurrent_select_release_balances_and_returns_to_zero() {
    let r = Arc::new(FunctionsRegistry::<usize>::default());
    for i in 0..4 {
        r.register("default", "f", format!("w{i}"), i, FunctionDef::default())
            .unwrap();
    }
    let counts: Vec<[usize; 4]> = (0..8)
        .map(|_| {
            let r = r.clone();
            thread::spawn(move || {
                let mut seen = [0usize; 4];
                for _ in 0..2000 {
                    let lease = r.select("default", "f").unwrap();
                    seen[*lease.handler()] += 1;
                }
                seen
            })
        })
        .map(|t| t.join().unwrap())
        .collect();
    let total: Vec<usize> = (0..4).map(|i| counts.iter().map(|c| c[i]).sum()).collect();
    assert!(total.iter().all(|&n| n > 0), "{total:?}");
    assert_eq!(r.lookup("default", "f").unwrap().in_flight, 0);
}
