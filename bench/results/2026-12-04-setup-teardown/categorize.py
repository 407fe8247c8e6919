# Sorts user-space samples (perf script -F ip,sym output) into kinds of work: by the leaf
# function for allocation, memcpy, clock reads and system-call wrappers, else by the nearest
# caller that names one of the markers below. argv: the script output, and the user-space
# microseconds per connection to share out.
import sys,re,collections
# samples separated by blank lines; frames leaf first
samples=[]; cur=[]
for line in open(sys.argv[1]):
    line=line.rstrip('\n')
    if not line.strip():
        if cur: samples.append(cur); cur=[]
        continue
    m=re.match(r'\s*[0-9a-f]+\s+(.*)',line)
    if m: cur.append(m.group(1))
if cur: samples.append(cur)
rules=[
 ('alloc: malloc/free', r'(^|\W)(_int_malloc|_int_free|malloc_consolidate|unlink_chunk|_int_memalign|__libc_malloc|malloc|cfree|__GI___libc_free|free|__libc_memalign|aligned_alloc|posix_memalign|_mid_memalign|tcache|__rust_alloc|__rust_dealloc)\b'),
 ('memcpy', r'memmove|memcpy'),
 ('clock', r'clock_gettime|Instant>::now|Timespec>::now|SystemTime>::now'),
]
markers=[
 ('metrics', r'prometheus::|Metrics::route_counters|finish_metrics|set_protocol'),
 ('tracing/span/log', r'^(?!.*Instrumented<T> as core::future).*(tracing::|tracing_subscriber|tracing_core|access_log|access_event)'),
 ('live table', r'LiveTable::'),
 ('cancel token', r'cancellation_token|CancellationToken'),
 ('tasktracker/spawn', r'Shutdown::spawn|TaskTracker|task::spawn|OwnedTasks'),
 ('timer', r'tokio::time::|runtime::time::'),
 ('io registration', r'Registration::new|RegistrationSet|Registration::deregister|Registration as core::ops::drop|add_source|deregister_source'),
 ('io driver turn', r'io::driver::Driver::turn'),
 ('accept loop', r'accept_loop'),
]
syswrap=r'^(epoll_ctl|epoll_wait|__libc_recv|__send|__close|accept4|__GI___shutdown|__libc_connect|__socket|setsockopt|getpeername|__GI___pthread_disable_asynccancel|__GI___pthread_enable_asynccancel|__libc_send|recv|send|__GI___close|__GI___connect|__GI___socket|__libc_accept4|__GI_setsockopt|__GI___getpeername|__GI___libc_write|write|__libc_write|splice)\b'
cat=collections.Counter(); sysc=collections.Counter()
for s in samples:
    leaf=s[0]
    c=None
    for name,pat in rules:
        # check leaf-most few frames (first non-inlined)
        if re.search(pat, leaf): c=name; break
    if c is None and re.match(syswrap, leaf.split(' ')[0]):
        c='syscall wrappers'; sysc[leaf.split(' ')[0]]+=1
    if c is None:
        for f in s:
            for name,pat in markers:
                if re.search(pat,f): c=name; break
            if c: break
    if c is None:
        if any(re.search(r'^sockgate::|<sockgate::|sockgate::',f) for f in s[:3]): c='sockgate code (leaf)'
        elif any('tokio::' in f for f in s[:3]): c='tokio other'
        else: c='other'
    cat[c]+=1
tot=len(samples); per=float(sys.argv[2]) if len(sys.argv)>2 else 15.4
for k,v in cat.most_common(): print(f"{k:24s} {100*v/tot:5.1f}%  {per*v/tot:5.2f} us")
print(tot, 'samples')
print(sysc.most_common(20))
