package main

import (
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/llmproxy/llmproxy/bench/report"
)

const preface = `Measured by ` + "`make bench`" + `, which rewrites this file: llmproxy
next to a direct connection to the nodes (the floor), nginx and HAProxy, each
balancing by least connections over the same simulated Ollama nodes
(` + "`ollamasim`" + `), all on 127.0.0.1 and all in one run, so that the ratios
hold on a busy machine. Non-streamed requests also go through a bare fasthttp
proxy, which shows what llmproxy's Go HTTP stack costs without llmproxy's own
work. Then come the three proxies while a node fails, llmproxy's
placement policies on a trace of multi-turn conversations, its response
cache with two instances sharing Redis, and the Go benchmarks of its hot
path. ` + "`make bench-quick`" + ` runs a shorter set in under two minutes, without
the trace and the Go benchmarks, and writes bench/out/quick.md instead.`

// methodFormat takes the number of rounds and the longest wait for a
// quiet machine.
const methodFormat = `- Every process runs on the same machine: the load generator (Go,
  fasthttp for single responses, and for streams its own HTTP/1.1 reader
  on raw sockets and epoll event loops), the simulated nodes, and the
  proxy under test. They compete for the CPUs, so absolute numbers
  depend on the machine; compare rows of one run.
- Proxy CPU time is utime plus stime from /proc/PID/stat of the proxy and
  its child processes (nginx's workers), read before and after the phase.
  The "of which kernel" column is the stime part: system calls, including
  the loopback TCP work that a read or write does for both ends.
  Peak RSS is VmHWM from /proc/PID/status, reset by writing 5 to
  /proc/PID/clear_refs before the phase; for nginx it is the sum over the
  master and its workers, which counts shared pages more than once.
- nginx runs ` + "`worker_processes auto`" + `, HAProxy its default of one
  thread per CPU, and llmproxy GOMAXPROCS equal to the CPUs, so each may use
  every CPU. nginx has proxy_buffering and proxy_request_buffering off,
  HTTP/1.1 keep-alive to the nodes and keepalive_requests raised to
  1,000,000. HAProxy has ` + "`balance leastconn`" + `, ` + "`http-reuse safe`" + `
  in keep-alive mode, and ` + "`option http-no-delay`" + `, without which it lets the
  kernel merge small writes and delays streamed tokens. llmproxy runs with
  ` + "`balancer.policy: least_conn`" + `, the cache and the per-address rate limit
  off, and log level warn. The failure, scheduler and cache scenarios change
  these settings as their sections say. The configs are written to
  bench/out/run/.
- The nodes respond from memory: the numbers show the cost of the proxy
  path, not of a model. A real node spends milliseconds to seconds per
  request, which hides most of the differences shown here. The scheduler
  trace is the exception: its nodes pace prompt evaluation, generation
  and model loads.
- Each phase of the throughput and streaming scenarios ran once per round
  on every target, the targets taking turns, for %d rounds; the other
  scenarios run once. Before each phase the runner waited, up to %s,
  until processes outside the benchmark used at most a tenth of the CPUs.
  The "others' CPU %%" column is the share of all CPUs those processes
  used during the phase, from /proc/stat minus the benchmark's own
  processes. The tables show per target the round with
  the lowest share, a choice that does not look at the results. The
  "machine busy %%" column is the share of all CPUs in use during the
  phase, from /proc/stat, the benchmark's own processes included.
- Every percentile is exact over all samples of the window, except the
  queue-wait buckets of the scheduler trace.
- ` + "`make bench BENCHFLAGS=-profile`" + ` runs llmproxy as bench/cmd/llmproxyprof,
  the same server with CPU profiling on signal, and saves a profile of each
  measured llmproxy phase in bench/out/profiles; read one with
  ` + "`go tool pprof -top bin/llmproxyprof FILE`" + `. Profiling costs a few
  percent of CPU, so the numbers of such a run are not comparable.
- At 1,000 direct streams on a 2-CPU machine (2026-12-05, utime plus
  stime sampled each second from /proc/PID/stat), the three
  stampsim nodes spent about 7.7 µs of CPU per chunk together and the
  stream load generator about 4 µs. Before stampsim had its lean path and
  the load generator its epoll loops, they spent 17 to 20 µs and 8 to
  10 µs: the set-up then ran out of CPU at 1,000 streams through any
  proxy, and its queueing, not the proxies, set the per-chunk latency.
- SSE per-chunk latency relies on bench/cmd/stampsim, which adds a
  "sent_at" field of up to 43 bytes to each event. Every target relays
  the same longer events.
- The runner measures no other processes while the Go benchmarks run, so
  their table shows the spread of several runs instead.
- Where llmproxy's extra CPU per request goes, from system call counts
  (` + "`strace -c -f -p PID`" + ` during bench/cmd/loadgen against the same three
  nodes, taken on 2026-12-04 on the machine of the first such report): at
  saturation (64 connections) llmproxy made 3.5 read(2) calls per
  request, 1.5 of them returning EAGAIN, and 2.0 write(2); nginx made 2.0
  recvfrom, 2.0 writev, 1.0 getsockopt and 0.2 epoll_wait. Go's net
  package tries a read before it waits for data, and nginx's event loop
  reads only after epoll reports data. At 500 requests per second
  (taken on 2026-12-05) llmproxy also made 3.5 epoll_pwait, 0.55 futex
  and 0.11 nanosleep calls per request: the Go scheduler parks and wakes
  threads between requests when the CPUs are not busy, which is why its
  CPU per request is higher at the fixed rate than at saturation. Before
  llmproxy read and wrote its sockets with raw system calls
  (internal/rawconn), it made about 3 futex and 4 nanosleep calls per
  request at that rate: every read or write entered the Go runtime's
  system-call state, which wakes the runtime's monitor thread (sysmon)
  when it sleeps, and the monitor then woke every 20 µs until the process
  was idle again. The profiles of -profile show the rest: header parsing
  in fasthttp, the scheduler and timers.
- Timers: fasthttp sets a client connection's read deadline twice per
  request, and llmproxy sets one on the node's connection per response.
  In a perf profile at saturation (2026-12-05) these changes, each a
  runtime timer re-armed under a lock, took about 3%% of llmproxy's CPU.
  internal/rawconn now passes a later deadline to Go's poller only when
  the earlier one passes.
- At 2000 requests per second, a perf profile (2026-12-05) put about a
  third of llmproxy's CPU in the kernel's context switches and wake-ups:
  a write that wakes the reader on the other end (the load generator or
  a node), the return from epoll_pwait when a request or response
  arrives, and, about 5%%, futex calls with which Go's scheduler starts a
  second thread when the poller returns more than one ready goroutine,
  and parks it again. nginx pays the first two in the same way.
- The kernel column locates the difference. For non-streamed requests at
  saturation the three proxies spend similar kernel time per request,
  since each does the same loopback reads and writes, and most of
  llmproxy's extra CPU is user time: the Go runtime's scheduler and
  netpoller, and fasthttp. At the fixed rate, where the CPUs idle between
  requests, llmproxy's kernel time is also higher than nginx's, spent in
  the epoll_pwait and futex calls with which the Go scheduler parks and
  wakes threads.
- Streams go through llmproxy's epoll event loops (internal/streamloop),
  which read a node's socket only when epoll reports data and write each
  read to the client as one chunk. A chunk costs one read(2) and one
  write(2), as in nginx, where a goroutine per stream made two reads, one
  of them returning EAGAIN, and parked and woke for every chunk. At 1,000
  streams a loop wakes once for many chunks. At 100 streams chunks arrive
  one at a time, so each one wakes the loop's goroutine through Go's
  poller and scheduler, the same epoll_pwait and futex cost as at the
  fixed rate. The loops read, write and poll with raw system calls, for
  the reason given above. Each stream also costs the request's own handling in
  Go (fasthttp's parsing, the request to the node, the response head),
  spread over the 20 to 40 chunks of a stream.
- Where llmproxy's CPU goes at saturation, from
  ` + "`perf record -e cpu-clock -g`" + ` on its process (2026-12-06): 59%% in the kernel, of which
  write(2) takes 39%% (the loopback send, which also delivers the data to
  the reader and wakes it), read(2) 9%%, epoll_pwait 2%%, and recvfrom and
  futex 1%% each. Of the 41%% in user space, llmproxy's own code is 12%%,
  spread over about a hundred functions of which none reaches 0.6%%; the
  Go runtime 9%% (its scheduler 5%%, allocation under 1%%, the garbage
  collector 0.3%%); fasthttp 8%%; Go's poller and net package 3%%; and
  reading the clock 2.5%%. No one function stands out to remove: meeting
  nginx's CPU per request would take halving the user time, which means
  serving client connections from event loops instead of a goroutine per
  connection.
- A request to a node of up to 16 KiB goes out in one write that also
  waits for the response head (internal/rawconn, WriteAwaitRead), so the
  read that used to find the node's socket empty is gone. By
  ` + "`perf stat`" + ` on the process at saturation (2026-12-06), llmproxy makes 6.2
  system calls per request instead of 7.2: 3.0 read(2), 2.0 write(2),
  1.0 recvfrom (the check that a pooled connection to a node is still
  fit) and 0.2 epoll_pwait. nginx makes 2.0 recvfrom, 2.0 writev and 0.2
  epoll_wait. The read left that returns EAGAIN is on the client's
  connection, where fasthttp reads the next request. In runs that
  alternated the two builds, CPU per request fell by about 4%%.
- Why runs differ: the same llmproxy process, measured five times in a
  row at saturation with no other load on the machine (2026-12-06), spent
  25 to 53 µs of CPU per request, its user and kernel time rising
  together, while /proc/stat counted no steal time. That points at the
  host under this virtual machine. So every phase runs the targets in
  turn, and the ratios within a run say more than any absolute figure.
- Where the added per-chunk latency at 1,000 streams comes from, from a
  build that compared each chunk's node timestamp with the time the
  stream loop read it and with the time its write returned (2026-12-06):
  nearly all of it passes before the read, while the chunk waits in the
  socket for the loop to run (p50 0.2 to 0.35 ms, p99 2 to 4 ms), and
  the write adds about 10 µs. During those phases the machine was 88 to
  97%% busy by vmstat, against 36 to 45%% for the direct phases, so the
  wait is for a CPU. Two variants did worse on the same machine: each
  loop blocking in epoll_wait on an OS thread of its own (p99 added about
  +14 ms, since after the wait the thread needs one of Go's scheduler
  slots, which it gets late under load) and llmproxy at nice -10 (about
  +4.7 ms against +3 ms, since the nodes and the load generator then wait
  instead).`

// newDocument returns the report's frame: title, machine and method.
func newDocument(opts options) *report.Document {
	title := "Benchmarks"
	if opts.quick {
		title = "Benchmarks (quick set)"
	}
	return &report.Document{
		Title:   title,
		Preface: preface,
		Date:    time.Now(),
		Command: opts.command,
		Machine: describeMachine(opts.binDir),
		Method:  fmt.Sprintf(methodFormat, opts.settings.Rounds, opts.settings.QuietWait),
	}
}

// describeMachine lists the machine and the versions of the programs
// measured, with the commit of llmproxy.
func describeMachine(binDir string) report.Machine {
	m := report.DescribeMachine(map[string][]string{
		"llmproxy": {binDir + "/llmproxy", "version"},
		"nginx":    {"nginx", "-v"},
		"HAProxy":  {"haproxy", "-v"},
	})
	m.Software = append(m.Software, "commit: "+commit())
	return m
}

// commit returns the checked-out commit, marked when the tree has changes
// other than the reports.
func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	id := strings.TrimSpace(string(out))
	// The reports themselves do not count: a run often starts while the
	// previous report is not yet committed.
	status, err := exec.Command("git", "status", "--porcelain", "--untracked-files=no",
		"--", ".", ":!BENCHMARKS.md", ":!bench/out").Output()
	if err == nil && len(strings.TrimSpace(string(status))) > 0 {
		return fmt.Sprintf("%s with uncommitted changes", id)
	}
	return id
}
