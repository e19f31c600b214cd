//! What the key supply learns from charon besides key exchanges: that the daemon is running
//! with its privileges dropped (a job on charon's processor, which runs only once charon's
//! worker threads exist), and that an IKE SA completed IKE_AUTH, replaced another in an
//! IKE rekey, or went away (a bus listener), so announcements made while it was being set
//! up may be acted on or forgotten.

use super::abi::{
    bus_t, ike_sa_t, job_priority_t, job_requeue_t, job_t, listener_t, JOB_PRIO_MEDIUM,
    JOB_REQUEUE_TYPE_NONE, JOB_STATUS_QUEUED,
};
use super::{boundary, symbols};
use crate::installed::{self, status_socket};
use std::sync::atomic::{AtomicBool, Ordering};

/// The one listener this library registers; charon holds its address while registered.
struct Listener(std::cell::UnsafeCell<listener_t>);
// SAFETY: charon only reads the listener's function pointers; we never write them after
// registration.
unsafe impl Sync for Listener {}

static LISTENER: Listener = Listener(std::cell::UnsafeCell::new(listener_t {
    alert: std::ptr::null_mut(),
    ike_state_change: std::ptr::null_mut(),
    child_state_change: std::ptr::null_mut(),
    message: std::ptr::null_mut(),
    ike_keys: std::ptr::null_mut(),
    ike_derived_keys: std::ptr::null_mut(),
    child_keys: std::ptr::null_mut(),
    child_derived_keys: std::ptr::null_mut(),
    ike_updown: Some(ike_updown),
    ike_rekey: Some(ike_rekey),
    ike_update: std::ptr::null_mut(),
    ike_reestablish_pre: std::ptr::null_mut(),
    ike_reestablish_post: std::ptr::null_mut(),
    child_updown: std::ptr::null_mut(),
    child_rekey: std::ptr::null_mut(),
    children_migrate: std::ptr::null_mut(),
    authorize: std::ptr::null_mut(),
    narrow: std::ptr::null_mut(),
    assign_vips: std::ptr::null_mut(),
    handle_vips: std::ptr::null_mut(),
}));

static REGISTERED: AtomicBool = AtomicBool::new(false);

fn bus() -> Option<*mut bus_t> {
    symbols::charon().map(|c| c.bus).filter(|b| !b.is_null())
}

/// Registers the listener and queues the start job (plugin load, in charon's main thread,
/// before privileges are dropped: nothing runs until charon's workers do).
pub(crate) fn register() {
    if let Some(bus) = bus() {
        if !REGISTERED.swap(true, Ordering::SeqCst) {
            // SAFETY: `bus` is charon's live bus; LISTENER is static, so it outlives the
            // registration, which unregister() ends before the library is unloaded.
            unsafe {
                if let Some(add) = (*bus).add_listener {
                    add(bus, LISTENER.0.get());
                }
            }
        }
    }
    queue_start_job();
}

/// Unregisters the listener (plugin destroy): charon must not call into an unloaded library.
pub(crate) fn unregister() {
    if !REGISTERED.swap(false, Ordering::SeqCst) {
        return;
    }
    if let Some(bus) = bus() {
        // SAFETY: as in register(); removing a registered listener is always allowed
        // outside a callback of that listener, and destroy is not such a callback.
        unsafe {
            if let Some(remove) = (*bus).remove_listener {
                remove(bus, LISTENER.0.get());
            }
        }
    }
}

/// `listener_t.ike_updown`: up after IKE_AUTH completed (authenticated), down when the IKE
/// SA goes. Returns true to stay registered.
unsafe extern "C" fn ike_updown(_: *mut listener_t, ike_sa: *mut ike_sa_t, up: bool) -> bool {
    boundary("ike_updown", true, || {
        // SAFETY: charon passes the IKE SA it has checked out for the duration of the call.
        let Some(ike_sa) = (unsafe { ike_sa.as_mut() }) else {
            return true;
        };
        let Some(unique_id) = ike_sa.get_unique_id.map(|f| unsafe { f(ike_sa) }) else {
            return true;
        };
        if let Some(rt) = installed::current() {
            if up {
                rt.supply.authenticated(unique_id);
            } else {
                rt.supply.forget(unique_id);
            }
        }
        true
    })
}

/// `listener_t.ike_rekey`: an IKE rekey completed. Its exchange ran with the new IKE SA
/// checked out, not yet established, so what the peer announced in it was held under the
/// new SA; the new SA inherits the old one's authentication.
unsafe extern "C" fn ike_rekey(
    _: *mut listener_t,
    _old: *mut ike_sa_t,
    new: *mut ike_sa_t,
) -> bool {
    boundary("ike_rekey", true, || {
        // SAFETY: charon passes IKE SAs it holds for the duration of the call.
        if let Some(new) = unsafe { new.as_mut() } {
            if let (Some(unique_id), Some(rt)) = (
                new.get_unique_id.map(|f| unsafe { f(new) }),
                installed::current(),
            ) {
                rt.supply.authenticated(unique_id);
            }
        }
        true
    })
}

/// The start job: charon's processor frees it with `destroy` after `execute`.
#[repr(C)]
struct StartJob {
    public: job_t,
}

fn queue_start_job() {
    let Some(processor) = symbols::lib().map(|l| l.processor).filter(|p| !p.is_null()) else {
        return;
    };
    let job = Box::into_raw(Box::new(StartJob {
        public: job_t {
            status: JOB_STATUS_QUEUED,
            execute: Some(start_job_execute),
            cancel: None,
            get_priority: Some(start_job_priority),
            destroy: Some(start_job_destroy),
        },
    }));
    // SAFETY: `processor` is libstrongswan's live processor; it takes ownership of the job
    // and calls destroy exactly once.
    unsafe {
        if let Some(queue) = (*processor).queue_job {
            queue(processor, job as *mut job_t);
        } else {
            drop(Box::from_raw(job));
        }
    }
}

/// Runs in one of charon's worker threads, which exist only after the privileges were
/// dropped: starts the key supply (filling every peer's outbound queue to its floor) and
/// the status socket, so neither waits for the first exchange.
unsafe extern "C" fn start_job_execute(_: *mut job_t) -> job_requeue_t {
    boundary("start job", (), || {
        if let Some(rt) = installed::current() {
            status_socket::ensure(rt.config.status_socket.as_deref(), false);
            rt.supply.start();
        }
    });
    // SAFETY: an all-zero job_requeue_t is JOB_REQUEUE_NONE (type 0, no schedule).
    let mut none: job_requeue_t = unsafe { std::mem::zeroed() };
    none.type_ = JOB_REQUEUE_TYPE_NONE;
    none
}

unsafe extern "C" fn start_job_priority(_: *mut job_t) -> job_priority_t {
    JOB_PRIO_MEDIUM
}

unsafe extern "C" fn start_job_destroy(job: *mut job_t) {
    boundary("start job destroy", (), || {
        if !job.is_null() {
            // SAFETY: `job` is the Box queue_start_job leaked; the processor destroys once.
            drop(unsafe { Box::from_raw(job as *mut StartJob) });
        }
    })
}
