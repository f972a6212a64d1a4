use super::*;
use proptest::prelude::*;
use weft_api::federation::{RecordNode, SharedAppSpec};

fn hub(members: &[&str]) -> HubSettings {
    HubSettings {
        members: members
            .iter()
            .map(|s| HubMember {
                site: (*s).into(),
                exports: vec!["demo/web".into(), "demo/db".into()],
            })
            .collect(),
        pool: "100.64.0.0/10".parse().unwrap(),
        app_prefix_len: 16,
        block_slices: 8,
    }
}

fn record(site: &str, app: &str, range: Option<&str>, explicit: bool, want: u32) -> SiteRecordSpec {
    SiteRecordSpec {
        site: site.into(),
        app: app.into(),
        app_spec: SharedAppSpec {
            address_space: range.map(Into::into),
            explicit,
            node_prefix_length: 26,
        },
        want_blocks: want,
        ..Default::default()
    }
}

fn records(rs: Vec<SiteRecordSpec>) -> BTreeMap<(String, String), SiteRecordSpec> {
    rs.into_iter()
        .map(|r| ((r.site.clone(), r.app.clone()), r))
        .collect()
}

fn blocks_of<'a>(a: &'a HubAllocationSpec, site: &str) -> Vec<&'a str> {
    a.blocks
        .iter()
        .filter(|b| b.site == site)
        .map(|b| b.cidr.as_str())
        .collect()
}

#[test]
fn members_configured_alike_get_disjoint_blocks_of_one_range() {
    let rs = records(vec![
        record("a", "demo/web", Some("10.100.0.0/16"), true, 2),
        record("b", "demo/web", Some("10.100.0.0/16"), true, 1),
    ]);
    let out = allocate(&hub(&["a", "b"]), &rs, &BTreeMap::new());
    let web = &out["demo/web"];
    assert_eq!(web.address_space.as_deref(), Some("10.100.0.0/16"));
    assert_eq!(web.node_prefix_length, 26);
    // 8 slices of /26 make a /23 block.
    assert_eq!(blocks_of(web, "a"), ["10.100.0.0/23", "10.100.2.0/23"]);
    assert_eq!(blocks_of(web, "b"), ["10.100.4.0/23"]);
    assert!(web.conflicts.is_empty(), "{:?}", web.conflicts);
}

#[test]
fn an_app_nobody_names_a_range_for_gets_one_from_the_pool() {
    let rs = records(vec![
        record("a", "demo/web", None, false, 1),
        record("a", "demo/db", None, false, 1),
    ]);
    let out = allocate(&hub(&["a"]), &rs, &BTreeMap::new());
    assert_eq!(
        out["demo/db"].address_space.as_deref(),
        Some("100.64.0.0/16")
    );
    assert_eq!(
        out["demo/web"].address_space.as_deref(),
        Some("100.65.0.0/16")
    );
}

#[test]
fn a_conflicting_range_is_reported_to_the_member_naming_the_field_and_the_other_site() {
    let rs = records(vec![
        record("a", "demo/web", Some("10.100.0.0/16"), true, 1),
        record("b", "demo/web", Some("10.200.0.0/16"), true, 1),
    ]);
    let out = allocate(&hub(&["a", "b"]), &rs, &BTreeMap::new());
    let web = &out["demo/web"];
    assert_eq!(web.address_space.as_deref(), Some("10.100.0.0/16"));
    assert_eq!(web.conflicts.len(), 2, "{:?}", web.conflicts);
    let (ca, cb) = (&web.conflicts[0], &web.conflicts[1]);
    assert_eq!(
        (cb.site.as_str(), cb.field.as_str()),
        ("b", "spec.addressSpace")
    );
    assert!(
        cb.message.contains("10.200.0.0/16") && cb.message.contains("site a"),
        "{}",
        cb.message
    );
    // The other side hears of it too, naming b.
    assert_eq!(
        (ca.site.as_str(), ca.field.as_str()),
        ("a", "spec.addressSpace")
    );
    assert!(ca.message.contains("site b disagrees"), "{}", ca.message);
    // Nothing changes for a, and b still gets its blocks of the shared range.
    assert_eq!(blocks_of(web, "b").len(), 1);
}

#[test]
fn a_different_slice_length_is_a_conflict_too() {
    let mut b = record("b", "demo/web", None, false, 1);
    b.app_spec.node_prefix_length = 24;
    let rs = records(vec![record("a", "demo/web", None, false, 1), b]);
    let web = &allocate(&hub(&["a", "b"]), &rs, &BTreeMap::new())["demo/web"];
    assert_eq!(web.node_prefix_length, 26);
    assert!(web.conflicts.iter().any(|c| c.site == "b"
        && c.field == "spec.nodePrefixLength"
        && c.message.contains("site a")));
}

#[test]
fn an_unexported_app_or_a_record_in_another_members_name_is_ignored() {
    let mut forged = record("b", "demo/web", Some("10.9.0.0/16"), true, 4);
    forged.site = "a".into();
    let mut rs = records(vec![record("b", "other/app", None, false, 1)]);
    rs.insert(("b".into(), "demo/web".into()), forged);
    let out = allocate(&hub(&["a", "b"]), &rs, &BTreeMap::new());
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn slices_a_member_already_uses_keep_their_blocks() {
    let mut a = record("a", "demo/web", Some("10.100.0.0/16"), false, 1);
    a.nodes.push(RecordNode {
        name: "n1".into(),
        site: "a".into(),
        slice: "10.100.6.64/26".into(),
        ..Default::default()
    });
    let rs = records(vec![a, record("b", "demo/web", None, false, 1)]);
    let web = &allocate(&hub(&["a", "b"]), &rs, &BTreeMap::new())["demo/web"];
    assert_eq!(blocks_of(web, "a"), ["10.100.6.0/23"]);
    assert_eq!(blocks_of(web, "b"), ["10.100.0.0/23"]);
}

#[test]
fn a_full_range_says_so_for_the_member_left_without() {
    let mut a = record("a", "demo/web", Some("10.100.0.0/24"), true, 1);
    a.app_spec.node_prefix_length = 26;
    let mut b = a.clone();
    b.site = "b".into();
    // /24 of /26 slices, 8 per block: one block, the whole range.
    let web = &allocate(&hub(&["a", "b"]), &records(vec![a, b]), &BTreeMap::new())["demo/web"];
    assert_eq!(blocks_of(web, "a"), ["10.100.0.0/24"]);
    assert!(web
        .conflicts
        .iter()
        .any(|c| c.site == "b" && c.message.contains("no free block")));
}

#[derive(Clone, Debug)]
enum Op {
    /// A member writes its record wanting this many blocks.
    Want(usize, u32),
    /// A member's record goes away (pruned, or the app left it).
    Leave(usize),
    /// The hub restarts: only its stored allocations survive.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..5, 0u32..6).prop_map(|(m, w)| Op::Want(m, w)),
        1 => (0usize..5).prop_map(Op::Leave),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    /// Members joining, growing, leaving and hub restarts: no two members
    /// ever hold overlapping blocks, every block lies in the range, and no
    /// block of a member that stays moves.
    #[test]
    fn blocks_never_overlap_and_never_move_while_their_member_stays(ops in proptest::collection::vec(op(), 1..40)) {
        let sites = ["a", "b", "c", "d", "e"];
        let h = hub(&sites);
        let mut rs: BTreeMap<(String, String), SiteRecordSpec> = BTreeMap::new();
        let mut prev: BTreeMap<String, HubAllocationSpec> = BTreeMap::new();
        for op in ops {
            let before = prev.clone();
            match op {
                Op::Want(m, w) => {
                    // Alike configuration everywhere: the hardest case.
                    let r = record(sites[m], "demo/web", Some("10.100.0.0/20"), true, w);
                    rs.insert((sites[m].into(), "demo/web".into()), r);
                }
                Op::Leave(m) => {
                    rs.remove(&(sites[m].to_string(), "demo/web".to_string()));
                }
                Op::Restart => {}
            }
            prev = allocate(&h, &rs, &prev);
            let Some(web) = prev.get("demo/web") else {
                prop_assert!(rs.is_empty());
                continue;
            };
            let range: Ipv4Net = web.address_space.as_deref().unwrap().parse().unwrap();
            let nets: Vec<(Ipv4Net, &str)> = web.blocks.iter().map(|b| (b.cidr.parse().unwrap(), b.site.as_str())).collect();
            for (i, (a, sa)) in nets.iter().enumerate() {
                prop_assert!(range.contains(a));
                prop_assert!(rs.contains_key(&(sa.to_string(), "demo/web".to_string())), "block of {} without a record", sa);
                for (b, sb) in &nets[i + 1..] {
                    prop_assert!(!overlaps(a, b), "{} ({}) and {} ({}) overlap", a, sa, b, sb);
                }
            }
            for (site, want) in rs.values().map(|r| (r.site.as_str(), r.want_blocks)) {
                let held = blocks_of(web, site).len() as u32;
                let full = web.conflicts.iter().any(|c| c.site == site);
                prop_assert!(held >= want || full, "{} wants {} holds {}", site, want, held);
            }
            if let Some(old) = before.get("demo/web") {
                for b in &old.blocks {
                    if rs.contains_key(&(b.site.clone(), "demo/web".to_string())) {
                        prop_assert!(web.blocks.contains(b), "block {:?} moved", b);
                    }
                }
            }
        }
    }
}
