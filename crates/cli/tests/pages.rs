//! Pages through the protocol to real daemons: 10,000 pages written, read back
//! identical, freed, and the memory monitor's use back to zero.

mod common;

use common::*;
use lego_wire::control::ReleaseSpaceReq;
use lego_wire::pages::{FreeRange, ReadPages, ReadPagesReply, WritePages, WriteReply};
use lego_wire::{Op, PageNo};

const PAGES: u64 = 10_000;
const BATCH: u64 = 64;

#[test]
fn ten_thousand_pages_round_trip_and_free() {
    let cluster = TestCluster::start(2, "256MiB", 200);
    let (vnode, asid) = cluster.vnode_space("pages");
    let placed = cluster.assign(asid, 0);
    assert_ne!(
        placed.primary.id,
        placed
            .backup
            .as_ref()
            .and_then(|b| b.on())
            .expect("two copies")
            .id
    );
    let mem = cluster.vnode_client(&placed.primary.addr, vnode);
    let seed = 0x5eed;
    // Pages spread over a 1 GiB vRegion: every 7th page number.
    let page_no = |i: u64| PageNo(7 * i + 3);

    // Write in batches, 8 batches in flight at a time.
    let mut pending = Vec::new();
    for first in (0..PAGES).step_by(BATCH as usize) {
        let idx: Vec<u64> = (first..(first + BATCH).min(PAGES)).collect();
        let pages: Vec<PageNo> = idx.iter().map(|&i| page_no(i)).collect();
        let data: Vec<u8> = pages
            .iter()
            .flat_map(|&p| page_content(seed, p.0))
            .collect();
        pending.push(
            mem.send(
                Op::WritePages,
                &[&WritePages {
                    asid,
                    version: 0,
                    peer: 0,
                    pages,
                    data: &data,
                }
                .encode()],
            )
            .unwrap(),
        );
        if pending.len() == 8 {
            for id in pending.drain(..) {
                let r = WriteReply::decode(&mem.wait(id).unwrap().body).unwrap();
                assert_eq!(r.stored, r.allocated, "every page is new");
            }
        }
    }
    for id in pending.drain(..) {
        mem.wait(id).unwrap();
    }
    assert_eq!(mem_stats(&mem).pages_held, PAGES);

    // Read everything back, in batches of a different size, and compare byte for byte.
    let mut checked = 0;
    for first in (0..PAGES).step_by(100) {
        let pages: Vec<PageNo> = (first..(first + 100).min(PAGES)).map(page_no).collect();
        let f = mem
            .call_raw(
                Op::ReadPages,
                &[&ReadPages {
                    asid,
                    pages: pages.clone(),
                }
                .encode()],
            )
            .unwrap();
        let reply = ReadPagesReply::decode(&f.body).unwrap();
        for (p, data) in pages.iter().zip(reply.pages()) {
            assert_eq!(
                data.expect("page is present"),
                page_content(seed, p.0).as_slice(),
                "page {p}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, PAGES);

    // A page never written reads as absent (zero-filled by the reader).
    let f = mem
        .call_raw(
            Op::ReadPages,
            &[&ReadPages {
                asid,
                pages: vec![PageNo(1)],
            }
            .encode()],
        )
        .unwrap();
    assert_eq!(ReadPagesReply::decode(&f.body).unwrap().present, &[0]);

    // Free the first half by range, the rest with the whole space via the manager.
    let half = FreeRange {
        asid,
        first: PageNo(0),
        count: page_no(PAGES / 2).0,
    };
    assert_eq!(mem.call(&half).unwrap(), PAGES / 2);
    assert_eq!(mem_stats(&mem).pages_held, PAGES / 2);
    let rel = cluster
        .mgr()
        .call(&ReleaseSpaceReq { asid, job: None })
        .unwrap();
    assert_eq!(rel.freed_pages, PAGES / 2);
    assert!(rel.unreachable.is_empty(), "{:?}", rel.unreachable);
    assert_eq!(mem_stats(&mem).pages_held, 0);

    // The manager learns the use from heartbeats: back to zero everywhere.
    // (A heartbeat from before the writes also says zero: wait for one
    // that counted them.)
    let st = cluster.wait_until("use back to zero after the writes", |s| {
        alive_memory(s)
            .iter()
            .all(|c| c.used == 0 && c.counters.get("pages_held") == Some(&0))
            && s.components.iter().any(|c| {
                c.id == placed.primary.id && c.counters.get("pages_written_total") == Some(&PAGES)
            })
    });
    let writer = st
        .components
        .iter()
        .find(|c| c.id == placed.primary.id)
        .unwrap();
    assert_eq!(writer.counters["pages_written_total"], PAGES);
    assert_eq!(writer.counters["bytes_in_total"], PAGES * 4096);
    assert!(
        st.vregions.is_empty(),
        "the released space's vRegions are gone"
    );
}

#[test]
fn capacity_is_enforced_with_a_clear_error() {
    let cluster = TestCluster::start(2, "1MiB", 200);
    let (vnode, asid) = cluster.vnode_space("small");
    let placed = cluster.assign(asid, 0);
    let mem = cluster.vnode_client(&placed.primary.addr, vnode);
    let data = vec![1u8; 4096 * 200];
    mem.call_raw(
        Op::WritePages,
        &[&WritePages {
            asid,
            version: 0,
            peer: 0,
            pages: (0..200).map(PageNo).collect(),
            data: &data,
        }
        .encode()],
    )
    .unwrap();
    let err = mem
        .call_raw(
            Op::WritePages,
            &[&WritePages {
                asid,
                version: 0,
                peer: 0,
                pages: (200..400).map(PageNo).collect(),
                data: &data,
            }
            .encode()],
        )
        .unwrap_err();
    assert_eq!(
        err.remote_code(),
        Some(lego_wire::ErrorCode::OutOfMemory),
        "{err}"
    );
    assert!(err.to_string().contains("out of memory"), "{err}");
    // Refused whole, and the monitor goes on serving.
    assert_eq!(mem_stats(&mem).pages_held, 200);
    mem.call_raw(
        Op::WritePages,
        &[&WritePages {
            asid,
            version: 0,
            peer: 0,
            pages: (200..256).map(PageNo).collect(),
            data: &data[..56 * 4096],
        }
        .encode()],
    )
    .unwrap();
    assert_eq!(mem_stats(&mem).pages_held, 256);
}
