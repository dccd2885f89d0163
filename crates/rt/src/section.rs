//! Which code is the runtime's own: its threads (the fault handler, the
//! stats writer) and the sections of application threads that run runtime
//! code. Their `malloc`s are served from private memory (see `heap`), so
//! the runtime never faults on the pageable arena it serves.

thread_local! {
    static IN_RUNTIME: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Is this thread running runtime code that must not fault on the arena?
pub fn in_runtime() -> bool {
    IN_RUNTIME.with(|c| c.get() > 0)
}

/// Runs `f` as runtime code: its `malloc`s are served from private memory.
pub fn runtime_section<R>(f: impl FnOnce() -> R) -> R {
    IN_RUNTIME.with(|c| c.set(c.get() + 1));
    let r = f();
    IN_RUNTIME.with(|c| c.set(c.get() - 1));
    r
}

/// Marks the current thread as a runtime thread for its whole life.
pub fn enter_runtime_thread() {
    IN_RUNTIME.with(|c| c.set(1));
}
