//! liblego_rt.so: the ExCache runtime, loaded into unmodified programs with
//! LD_PRELOAD by the processor monitor.
//!
//! - [`arena`]: one big reservation that holds all anonymous memory of the
//!   program, and the page-range allocator inside it.
//! - [`heap`] and [`shim`]: the interposed malloc family, mmap, munmap,
//!   mremap, madvise, brk and sbrk, all served from the arena.
//! - [`policy`]: the ExCache's decisions, a pure state machine: page
//!   states, FIFO replacement, prefetch streams, what to install, protect,
//!   write back, drop and free.
//! - [`pager`]: the ExCache's executor: carries out the policy's decisions
//!   with userfaultfd (zero-fill, fetch with prefetch, dirty tracking by
//!   write protection) and the memory monitors (batched write-back to both
//!   replicas).
//! - [`remote`]: the address space at the manager, vRegion placements, and
//!   the memory monitors.
//! - [`process`]: fork and exec. [`stats`]: counters. [`sys`]: raw system calls
//!   and userfaultfd bindings. [`rtalloc`]: the runtime's own allocator.
//!
//! Configuration comes from the environment (`LEGO_RT_MANAGER`,
//! `LEGO_RT_VNODE`, `LEGO_RT_VNODE_ID`, `LEGO_RT_KEY`, `LEGO_RT_EXCACHE`,
//! `LEGO_RT_JOB`, `LEGO_RT_JOB_PROOF`, `LEGO_RT_QUOTA`: the
//! vNode has a memory quota, see [`quota`]; `LEGO_RT_BROKER`: the way out of
//! the job's jail, see [`broker`]; `LEGO_RT_UFFD_DEV`: an open
//! `/dev/userfaultfd`, see [`sys`]). Without `LEGO_RT_MANAGER` the library
//! only serves memory locally.
//!
//! Exit statuses: 117 when memory is lost (no replica of a vRegion can be
//! reached, or fork cannot copy memory), 118 when the runtime cannot start
//! (no userfaultfd, no manager). Both print a line starting with "lego:".

// In the crate's own test binary the constructor is not installed, so the
// start-up path is unused there.
#![cfg_attr(test, allow(dead_code))]

pub mod arena;
pub mod broker;
pub mod heap;
pub mod lock;
pub mod pager;
pub mod policy;
pub mod process;
pub mod quota;
pub mod remote;
pub mod rtalloc;
pub mod section;
pub mod shim;
pub mod stats;
pub mod sys;

use std::sync::atomic::{AtomicBool, Ordering};

use remote::{Config, Lost, Remote};

#[global_allocator]
pub static ALLOC: rtalloc::RtAlloc = rtalloc::RtAlloc::new();

/// Exit status when memory is lost.
pub const EXIT_MEMORY_LOST: i32 = 117;
/// Exit status when the runtime cannot start.
pub const EXIT_CANNOT_START: i32 = 118;

/// Settings read once at start: after that the environment must not be read,
/// since a program may provide its own `getenv` over data in pageable memory
/// (bash does), and the fault handler or a forked child would fault on it.
static SPIN_US: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(60);

/// Whether the fault handler busy-waits for the next fault too (set at start).
static SPIN_FAULTS: AtomicBool = AtomicBool::new(true);

/// How long runtime threads busy-wait for a reply or the next fault.
pub fn spin() -> std::time::Duration {
    std::time::Duration::from_micros(SPIN_US.load(Ordering::Relaxed))
}

/// How long the fault handler busy-waits for the next fault: as long as for
/// a reply when the process may run on more than one CPU, else not at all
/// (on one CPU it would hold off the very thread whose fault it just
/// resolved).
pub fn fault_spin() -> std::time::Duration {
    if SPIN_FAULTS.load(Ordering::Relaxed) {
        spin()
    } else {
        std::time::Duration::ZERO
    }
}

/// The number of CPUs this process may run on.
fn allowed_cpus() -> usize {
    // SAFETY: sched_getaffinity writes at most size_of::<cpu_set_t>() bytes into `set`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return 1;
        }
        libc::CPU_COUNT(&set) as usize
    }
}

/// Set in forked children.
pub static CHILD: AtomicBool = AtomicBool::new(false);
/// Whether this process reports the job's counters (the job's first).
static STATS: AtomicBool = AtomicBool::new(false);
static STATS_ASID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn stats_main(_: usize) {
    // At once, then every half second: a program that ends with _exit
    // (dash does) never runs the final report of `fini`.
    loop {
        if CHILD.load(Ordering::Relaxed) {
            return;
        }
        broker::report_counters(&stats::to_json(STATS_ASID.load(Ordering::Relaxed)));
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn die(msg: &str, status: i32) -> ! {
    sys::write_fd(2, msg.as_bytes());
    // SAFETY: ends the process at once; nothing of ours must run after this.
    unsafe { libc::_exit(status) }
}

/// The runtime cannot start: say why and stop.
pub fn fatal_start(msg: &str) -> ! {
    die(
        &format!("lego: the runtime cannot start: {msg}\n"),
        EXIT_CANNOT_START,
    )
}

/// Memory of the process is gone: say which and stop, never run on zeros.
pub fn fatal_lost(lost: &Lost) -> ! {
    die(
        &format!(
            "lego: memory lost: vRegion {} of address space {} cannot be reached on any memory monitor ({}); stopping the process\n",
            lost.vregion, lost.asid, lost.detail
        ),
        EXIT_MEMORY_LOST,
    )
}

pub fn fatal_lost_msg(msg: &str) -> ! {
    die(&format!("lego: memory lost: {msg}\n"), EXIT_MEMORY_LOST)
}

fn config() -> Result<Option<Config>, String> {
    let Ok(manager) = std::env::var("LEGO_RT_MANAGER") else {
        return Ok(None);
    };
    if let Some(us) = std::env::var("LEGO_RT_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        SPIN_US.store(us, Ordering::Relaxed);
    }
    SPIN_FAULTS.store(allowed_cpus() > 1, Ordering::Relaxed);
    let fd_var = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<i32>().ok());
    broker::init(fd_var("LEGO_RT_BROKER"));
    sys::init_uffd_dev(fd_var("LEGO_RT_UFFD_DEV"));
    let get = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let key = lego_wire::auth::Secret::from_hex(&get("LEGO_RT_KEY")?)
        .map_err(|e| format!("LEGO_RT_KEY: {e}"))?;
    let mut key_bytes = [0u8; 32];
    let hex = key.to_hex();
    for (i, b) in key_bytes.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex");
    }
    let num = |k: &str| -> Result<u64, String> {
        get(k)?.parse().map_err(|_| format!("{k} is not a number"))
    };
    Ok(Some(Config {
        manager,
        vnode: get("LEGO_RT_VNODE")?,
        vnode_id: num("LEGO_RT_VNODE_ID")? as u32,
        key: key_bytes,
        excache: num("LEGO_RT_EXCACHE")? as usize,
        job: std::env::var("LEGO_RT_JOB")
            .ok()
            .and_then(|v| v.parse().ok()),
        job_proof: std::env::var("LEGO_RT_JOB_PROOF").ok(),
        quota: std::env::var_os("LEGO_RT_QUOTA").is_some(),
    }))
}

/// Starts a runtime thread with the raw pthread API, so that it is marked as
/// a runtime thread before any code of std runs in it (std's thread start
/// initialises thread-locals, which allocates through our `malloc`).
fn spawn_runtime_thread(name: &std::ffi::CStr, f: extern "C" fn(usize), arg: usize) {
    struct Start {
        f: extern "C" fn(usize),
        arg: usize,
    }
    extern "C" fn trampoline(p: *mut libc::c_void) -> *mut libc::c_void {
        section::enter_runtime_thread();
        // SAFETY: `p` is the Box<Start> leaked by the spawner, used once.
        let s = unsafe { Box::from_raw(p.cast::<Start>()) };
        (s.f)(s.arg);
        std::ptr::null_mut()
    }
    let start = Box::into_raw(Box::new(Start { f, arg }));
    // SAFETY: plain pthread calls with valid pointers; the new thread owns
    // `start`. The new thread starts with every signal blocked, so that no
    // signal handler of the application ever runs on a runtime thread (it
    // could touch pageable memory and fault on the fault handler itself).
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        libc::pthread_attr_init(&mut attr);
        libc::pthread_attr_setstacksize(&mut attr, 512 << 10);
        let mut tid: libc::pthread_t = 0;
        let r = libc::pthread_create(&mut tid, &attr, trampoline, start.cast());
        libc::pthread_attr_destroy(&mut attr);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if r != 0 {
            fatal_start(&format!("cannot start a runtime thread: error {r}"));
        }
        libc::pthread_setname_np(tid, name.as_ptr());
        libc::pthread_detach(tid);
    }
}

extern "C" fn handler_main(fd: usize) {
    pager::handler_loop(sys::UffdEvents::from_raw(fd as i32))
}

/// Starts the fault handler thread for a userfaultfd.
pub fn start_handler(uffd: sys::UffdEvents) {
    spawn_runtime_thread(c"lego-pager", handler_main, uffd.raw() as usize);
}

extern "C" fn leaser_main(fd: usize) {
    quota::leaser_loop(fd as i32)
}

/// Starts the thread that leases memory ahead of need, woken through the
/// pipe whose read end is `fd` (see [`quota`]).
pub fn start_leaser(fd: i32) {
    spawn_runtime_thread(c"lego-leaser", leaser_main, fd as usize);
}

extern "C" fn init() {
    section::runtime_section(start);
}

fn start() {
    let cfg = match config() {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => fatal_start(&e),
    };
    // Only the job's first process (across its execs) reports counters: the
    // first runtime records its pid for the processes that follow.
    let me = std::process::id().to_string();
    let stats_pid = std::env::var("LEGO_RT_STATS_PID").unwrap_or_else(|_| {
        std::env::set_var("LEGO_RT_STATS_PID", &me);
        me.clone()
    });
    STATS.store(stats_pid == me && broker::present(), Ordering::Relaxed);
    let (base, len) = arena::arena();
    let uffd = sys::Uffd::open().unwrap_or_else(|e| {
        fatal_start(&format!(
            "userfaultfd is not available ({e}); lego needs /dev/userfaultfd or the userfaultfd system call"
        ))
    });
    let remote = Remote::connect(&cfg).unwrap_or_else(|e| {
        fatal_start(&format!(
            "cannot reach the lego manager at {}: {e}",
            cfg.manager
        ))
    });
    let asid = remote.asid;
    if cfg.quota {
        if let Err(e) = quota::init(remote.manager_link(), asid) {
            fatal_start(&e);
        }
    }
    // The processor monitor frees it when this process is gone (and the
    // space of the image this one replaced with exec, if any).
    broker::report_space(asid.0);
    let p = pager::Pager::new(uffd, base, len, cfg.excache, remote)
        .unwrap_or_else(|e| fatal_start(&format!("{e}")));
    let events = p.uffd.events();
    *pager::PAGER.lock() = Some(p);
    // The handler runs before the arena is registered: any fault after
    // registration, from any thread, is served.
    start_handler(events);
    {
        let mut guard = pager::PAGER.lock();
        let p = guard.as_mut().expect("just set");
        if let Err(e) = p.uffd.register(base, len) {
            fatal_start(&format!(
                "userfaultfd cannot manage the arena ({e}); write-protect faults on anonymous memory need Linux 5.7+"
            ));
        }
        p.adopt(base, arena::top());
    }
    process::install();
    if STATS.load(Ordering::Relaxed) {
        STATS_ASID.store(asid.0, Ordering::Relaxed);
        spawn_runtime_thread(c"lego-stats", stats_main, 0);
    }
}

extern "C" fn fini() {
    if CHILD.load(Ordering::Relaxed) {
        return;
    }
    section::enter_runtime_thread();
    if STATS.load(Ordering::Relaxed) {
        let asid = pager::PAGER
            .try_lock()
            .and_then(|p| p.as_ref().map(|p| p.remote.asid.0))
            .unwrap_or(0);
        broker::report_counters(&stats::to_json(asid));
    }
}

// Not in this crate's own test binary: there the runtime must not take over.
#[cfg(not(test))]
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

#[cfg(not(test))]
#[used]
#[link_section = ".fini_array"]
static FINI: extern "C" fn() = fini;
