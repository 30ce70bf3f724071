//! [`Driver`]: a single-threaded executor with its own readiness poller, turned by an event loop
//! that is not tokio's (docs/architecture.md, "Requests on the loop's thread").
//!
//! The engine's work runs on its tokio runtime, and a Python handler runs on an asyncio loop's
//! thread: an HTTP request served on tokio and answered on the loop crosses threads three times.
//! A driver lets the loop's own thread run futures instead. The loop watches [`Driver::fd`] (an
//! epoll or kqueue descriptor) and calls [`Driver::turn`] whenever it is readable; the turn polls
//! the driver's sockets with no wait, wakes the futures whose sockets are ready and polls every
//! woken future, on the calling thread. Futures are spawned from any thread ([`Spawner`]); a
//! waker used from another thread (a tokio timer, a worker's answer) writes the driver's eventfd,
//! which makes the descriptor readable and so wakes the loop. A waker used on the loop's thread
//! while it turns the driver ([`Driver::enter`]) only queues its future: no system call.
//!
//! The futures may use tokio's timers and synchronisation: the turn enters the runtime handle
//! given to [`Driver::new`]. Sockets are [`DrivenStream`]s, registered with the driver's poller,
//! edge-triggered, so a socket is only waited on after a read or write found it not ready.
//!
//! A future that panics is dropped (its socket closes) and the turn goes on: a driver's turn is
//! called across a language boundary, where a panic must not reach.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::{self, Read, Write};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::ThreadId;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use mio::{Interest, Token};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::warn;

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The token of the eventfd that wakes the driver from other threads.
const WAKER: Token = Token(usize::MAX);

// NOTE: bounds how long one turn holds the loop; the rest follows on the loop's next turn (the
// driver stays readable). Not tuned by measurement: E4 at 64 in flight polls about one future
// per request, far below it.
const MAX_POLLS_PER_RUN: usize = 1024;

/// A single-threaded executor and poller, turned by its owner thread (see the module docs).
pub struct Driver {
    poll: Mutex<mio::Poll>,
    events: Mutex<mio::Events>,
    shared: Arc<Shared>,
}

/// What wakers, spawners and streams share with the driver.
struct Shared {
    registry: mio::Registry,
    waker: mio::Waker,
    /// True from an eventfd write until the next turn.
    notified: AtomicBool,
    /// How deep the owner thread is inside [`Driver::enter`] (it may nest).
    turning: AtomicUsize,
    owner: ThreadId,
    runtime: tokio::runtime::Handle,
    tasks: Mutex<HashMap<usize, Slot>>,
    ready: Mutex<VecDeque<usize>>,
    next_id: AtomicUsize,
    sources: Mutex<HashMap<usize, Weak<Source>>>,
    closed: AtomicBool,
}

/// One spawned future, out of the map while it is being polled.
struct Slot {
    future: Option<Task>,
    waker: Arc<TaskWaker>,
}

struct TaskWaker {
    id: usize,
    /// True from a wake until the future is polled.
    queued: AtomicBool,
    shared: Weak<Shared>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.ready).push_back(self.id);
            shared.notify();
        }
    }
}

impl Shared {
    /// Makes the owner turn the driver soon: nothing when it is turning it on this very thread
    /// (it looks at the ready queue before it stops), else one eventfd write per turn.
    fn notify(&self) {
        if self.turning.load(Ordering::Acquire) > 0 && std::thread::current().id() == self.owner {
            return;
        }
        if !self.notified.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                warn!("driver wake failed: {e}");
            }
        }
    }

    fn spawn(self: &Arc<Self>, future: Task) -> Result<(), Task> {
        if self.closed.load(Ordering::Acquire) {
            return Err(future);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let waker = Arc::new(TaskWaker {
            id,
            queued: AtomicBool::new(false),
            shared: Arc::downgrade(self),
        });
        {
            let mut tasks = lock(&self.tasks);
            // Checked again under the lock that `close` empties the map under.
            if self.closed.load(Ordering::Acquire) {
                return Err(future);
            }
            tasks.insert(
                id,
                Slot {
                    future: Some(future),
                    waker: waker.clone(),
                },
            );
        }
        waker.wake_by_ref();
        Ok(())
    }
}

/// Spawns futures onto a [`Driver`] and registers sockets with it, from any thread.
#[derive(Clone)]
pub struct Spawner {
    shared: Arc<Shared>,
}

impl Spawner {
    /// Queues `future` to run on the driver's owner thread. Hands it back once the driver is
    /// closed.
    pub fn spawn<F>(&self, future: F) -> Result<(), F>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(future);
        }
        // A boxed future cannot be handed back as `F`: a close between the check above and the
        // insertion drops it instead (the driver is going away anyway).
        let _ = self.shared.spawn(Box::pin(future));
        Ok(())
    }

    /// True once the driver is closed: nothing spawned runs any more.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Registers a connected socket (non-blocking mode is set) with the driver's poller.
    pub fn register(&self, stream: std::net::TcpStream) -> io::Result<DrivenStream> {
        stream.set_nonblocking(true)?;
        let mut stream = mio::net::TcpStream::from_std(stream);
        let token = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let source = Arc::new(Source::default());
        lock(&self.shared.sources).insert(token, Arc::downgrade(&source));
        if let Err(e) = self.shared.registry.register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            lock(&self.shared.sources).remove(&token);
            return Err(e);
        }
        Ok(DrivenStream {
            stream,
            token,
            source,
            shared: Arc::downgrade(&self.shared),
        })
    }
}

impl Driver {
    /// A driver whose owner is the calling thread; its futures run in `runtime`'s context
    /// (tokio timers, `spawn` onto the runtime).
    pub fn new(runtime: tokio::runtime::Handle) -> io::Result<Driver> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        Ok(Driver {
            poll: Mutex::new(poll),
            events: Mutex::new(mio::Events::with_capacity(256)),
            shared: Arc::new(Shared {
                registry,
                waker,
                notified: AtomicBool::new(false),
                turning: AtomicUsize::new(0),
                owner: std::thread::current().id(),
                runtime,
                tasks: Mutex::new(HashMap::new()),
                ready: Mutex::new(VecDeque::new()),
                next_id: AtomicUsize::new(0),
                sources: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The descriptor the owner's event loop watches: readable when the driver should turn.
    #[cfg(unix)]
    pub fn fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        lock(&self.poll).as_raw_fd()
    }

    /// Spawns and registers from any thread.
    pub fn spawner(&self) -> Spawner {
        Spawner {
            shared: self.shared.clone(),
        }
    }

    /// True when futures are queued to be polled.
    pub fn has_ready(&self) -> bool {
        !lock(&self.shared.ready).is_empty()
    }

    /// True on the thread that turns the driver.
    pub fn is_owner_thread(&self) -> bool {
        std::thread::current().id() == self.shared.owner
    }

    /// Futures not finished yet.
    pub fn task_count(&self) -> usize {
        lock(&self.shared.tasks).len()
    }

    /// Marks the owner thread as turning the driver until the guard drops: wakes on this thread
    /// only queue their future, and the guard's drop makes sure none stays queued unseen. Also
    /// enters the runtime's context. Call on the owner thread.
    pub fn enter(&self) -> Entered<'_> {
        let runtime = self.shared.runtime.enter();
        self.shared.turning.fetch_add(1, Ordering::AcqRel);
        Entered {
            shared: &self.shared,
            _runtime: runtime,
        }
    }

    /// Polls the driver's sockets without waiting, wakes the futures whose sockets are ready,
    /// then polls every woken future ([`Driver::run`]). Returns true when futures are still
    /// queued (the per-run bound was reached; the driver stays readable for the next turn).
    /// Call on the owner thread, inside [`Driver::enter`].
    pub fn turn(&self) -> bool {
        self.shared.notified.store(false, Ordering::Release);
        self.poll_sockets(Some(Duration::ZERO));
        self.run()
    }

    /// Like [`Driver::turn`], but waits up to `timeout` for a socket or a wake when nothing is
    /// queued: for a thread whose only job is to turn the driver (tests, tools).
    pub fn turn_waiting(&self, timeout: Duration) -> bool {
        let idle = lock(&self.shared.ready).is_empty();
        self.shared.notified.store(false, Ordering::Release);
        self.poll_sockets(Some(if idle { timeout } else { Duration::ZERO }));
        self.run()
    }

    fn poll_sockets(&self, timeout: Option<Duration>) {
        let mut poll = lock(&self.poll);
        let mut events = lock(&self.events);
        loop {
            match poll.poll(&mut events, timeout) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    warn!("driver poll failed: {e}");
                    return;
                }
            }
        }
        let sources = lock(&self.shared.sources);
        for event in events.iter() {
            if event.token() == WAKER {
                continue;
            }
            let Some(source) = sources.get(&event.token().0).and_then(Weak::upgrade) else {
                continue;
            };
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                source.read.wake();
            }
            if event.is_writable() || event.is_write_closed() || event.is_error() {
                source.write.wake();
            }
        }
    }

    /// Polls the queued futures, those they wake on the way included, up to a bound. Returns
    /// true when some are still queued. Call on the owner thread.
    pub fn run(&self) -> bool {
        for _ in 0..MAX_POLLS_PER_RUN {
            let Some(id) = lock(&self.shared.ready).pop_front() else {
                return false;
            };
            self.poll_task(id);
        }
        let more = !lock(&self.shared.ready).is_empty();
        if more {
            // Outside `enter`'s guard this is what brings the next turn; inside it, the guard.
            self.shared.notify();
        }
        more
    }

    fn poll_task(&self, id: usize) {
        let (future, waker) = {
            let mut tasks = lock(&self.shared.tasks);
            let Some(slot) = tasks.get_mut(&id) else {
                return;
            };
            (slot.future.take(), slot.waker.clone())
        };
        let Some(mut future) = future else {
            return;
        };
        waker.queued.store(false, Ordering::Release);
        let task_waker = Waker::from(waker);
        let mut cx = Context::from_waker(&task_waker);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(&mut cx)));
        let mut tasks = lock(&self.shared.tasks);
        match polled {
            Ok(Poll::Pending) => {
                if let Some(slot) = tasks.get_mut(&id) {
                    slot.future = Some(future);
                    return;
                }
            }
            Ok(Poll::Ready(())) => {}
            Err(_) => warn!("a future on the driver panicked; it was dropped"),
        }
        tasks.remove(&id);
        drop(tasks);
        // Dropped outside the lock: its streams deregister themselves.
        drop(future);
    }

    /// Stops the driver: spawners refuse from now on and every future is dropped (their
    /// sockets close). Call on the owner thread.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let _runtime = self.shared.runtime.enter();
        let tasks: Vec<Slot> = lock(&self.shared.tasks).drain().map(|(_, s)| s).collect();
        lock(&self.shared.ready).clear();
        drop(tasks);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.close();
    }
}

/// The owner thread turning a driver ([`Driver::enter`]).
pub struct Entered<'a> {
    shared: &'a Arc<Shared>,
    _runtime: tokio::runtime::EnterGuard<'a>,
}

impl Drop for Entered<'_> {
    fn drop(&mut self) {
        let outermost = self.shared.turning.fetch_sub(1, Ordering::AcqRel) == 1;
        if outermost && !lock(&self.shared.ready).is_empty() {
            self.shared.notify();
        }
    }
}

/// The wakers of one socket's readers and writers.
#[derive(Default)]
struct Source {
    read: AtomicWaker,
    write: AtomicWaker,
}

/// A TCP stream served by a [`Driver`]: tokio's `AsyncRead` and `AsyncWrite`, readiness from the
/// driver's poller. Deregistered when dropped, before its socket closes.
pub struct DrivenStream {
    stream: mio::net::TcpStream,
    token: usize,
    source: Arc<Source>,
    shared: Weak<Shared>,
}

impl DrivenStream {
    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.stream.peer_addr()
    }
}

impl Drop for DrivenStream {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            let _ = shared.registry.deregister(&mut self.stream);
            lock(&shared.sources).remove(&self.token);
        }
    }
}

impl AsyncRead for DrivenStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match (&this.stream).read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Edge-triggered: data arriving after this read is a new event. Events are
                    // taken and futures polled on the owner thread alone, so none can come
                    // between the read and the registration.
                    this.source.read.register(cx.waker());
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl DrivenStream {
    fn poll_io<T>(
        &mut self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(&mio::net::TcpStream) -> io::Result<T>,
    ) -> Poll<io::Result<T>> {
        loop {
            match op(&self.stream) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // As for reads (above).
                    self.source.write.register(cx.waker());
                    return Poll::Pending;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for DrivenStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(cx, |mut s| s.write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_io(cx, |mut s| s.write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream.shutdown(std::net::Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(20);

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Turns `driver` on this (its owner) thread until `done` holds.
    fn turn_until(driver: &Driver, done: impl Fn() -> bool) {
        let began = Instant::now();
        while !done() {
            assert!(began.elapsed() < DEADLINE, "the driver never got there");
            let _entered = driver.enter();
            driver.turn_waiting(Duration::from_millis(50));
        }
    }

    /// Sets its flag when dropped.
    struct DropFlag(Arc<AtomicBool>);

    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Release);
        }
    }

    #[test]
    fn futures_spawned_anywhere_run_on_the_owner_thread() {
        let rt = runtime();
        let driver = Driver::new(rt.handle().clone()).unwrap();
        let spawner = driver.spawner();
        let ran_on = Arc::new(Mutex::new(Vec::new()));
        let from_elsewhere = {
            let ran_on = ran_on.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    let ran_on = ran_on.clone();
                    let spawned = spawner.spawn(async move {
                        lock(&ran_on).push(std::thread::current().id());
                    });
                    assert!(spawned.is_ok());
                }
            })
        };
        from_elsewhere.join().unwrap();
        turn_until(&driver, || lock(&ran_on).len() == 10);
        assert!(lock(&ran_on)
            .iter()
            .all(|id| *id == std::thread::current().id()));
        assert_eq!(driver.task_count(), 0);
    }

    #[test]
    fn a_runtime_timer_wakes_the_driver_through_its_descriptor() {
        let rt = runtime();
        let driver = Driver::new(rt.handle().clone()).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let _ = driver.spawner().spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            flag.store(true, Ordering::Release);
        });
        // One turn starts the sleep; only the timer's wake (an eventfd write from the runtime's
        // thread) can bring the turn that finishes it.
        {
            let _entered = driver.enter();
            driver.turn();
        }
        assert!(!done.load(Ordering::Acquire));
        turn_until(&driver, || done.load(Ordering::Acquire));
    }

    #[test]
    fn a_panicking_future_is_dropped_and_the_others_go_on() {
        let rt = runtime();
        let driver = Driver::new(rt.handle().clone()).unwrap();
        let spawner = driver.spawner();
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(dropped.clone());
        let _ = spawner.spawn(async move {
            let _guard = guard;
            panic!("a handler bug");
        });
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let _ = spawner.spawn(async move { flag.store(true, Ordering::Release) });
        turn_until(&driver, || ran.load(Ordering::Acquire));
        assert!(dropped.load(Ordering::Acquire));
        assert_eq!(driver.task_count(), 0);
    }

    #[test]
    fn closing_drops_the_futures_and_refuses_new_ones() {
        let rt = runtime();
        let driver = Driver::new(rt.handle().clone()).unwrap();
        let spawner = driver.spawner();
        let dropped = Arc::new(AtomicBool::new(false));
        let guard = DropFlag(dropped.clone());
        let _ = spawner.spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        {
            let _entered = driver.enter();
            driver.turn();
        }
        assert_eq!(driver.task_count(), 1);
        driver.close();
        assert!(dropped.load(Ordering::Acquire));
        assert!(spawner.is_closed());
        assert!(spawner.spawn(async {}).is_err());
        assert_eq!(driver.task_count(), 0);
    }

    #[test]
    fn a_driven_stream_reads_and_writes_a_real_socket() {
        let rt = runtime();
        let driver = Driver::new(rt.handle().clone()).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        // Sends 1 MiB, larger than the socket buffers, so both sides wait on readiness.
        let client = std::thread::spawn(move || {
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            let sent: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
            let writer = {
                let mut stream = stream.try_clone().unwrap();
                let sent = sent.clone();
                std::thread::spawn(move || {
                    stream.write_all(&sent).unwrap();
                    stream.shutdown(std::net::Shutdown::Write).unwrap();
                })
            };
            let mut echoed = Vec::new();
            stream.read_to_end(&mut echoed).unwrap();
            writer.join().unwrap();
            echoed == sent
        });
        let (accepted, _) = listener.accept().unwrap();
        let mut socket = driver.spawner().register(accepted).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let _ = driver.spawner().spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                socket.write_all(&buf[..n]).await.unwrap();
            }
            socket.shutdown().await.unwrap();
            flag.store(true, Ordering::Release);
        });
        turn_until(&driver, || done.load(Ordering::Acquire));
        assert!(
            client.join().unwrap(),
            "the echo differs from what was sent"
        );
    }
}
