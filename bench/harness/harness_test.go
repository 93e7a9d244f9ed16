package harness

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmproxy/llmproxy/ollamasim"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name      string
		stat      string
		wantPPID  string
		wantUTime string
		wantErr   bool
	}{
		{
			name:      "plain name",
			stat:      "42 (nginx) S 7 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 1 0",
			wantPPID:  "7",
			wantUTime: "250",
		},
		{
			name:      "name with spaces and parentheses",
			stat:      "42 (a (b) c) R 9 42 42 0 -1 4194560 100 0 0 0 11 3 0 0 20 0 1 0",
			wantPPID:  "9",
			wantUTime: "11",
		},
		{name: "no name", stat: "42 nginx S 7", wantErr: true},
		{name: "truncated", stat: "42 (nginx) S 7 42", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fields, err := parseStat([]byte(tt.stat))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseStat(%q) = %v, want an error", tt.stat, fields)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseStat: %v", err)
			}
			if fields[1] != tt.wantPPID {
				t.Errorf("parent PID = %s, want %s", fields[1], tt.wantPPID)
			}
			if fields[11] != tt.wantUTime {
				t.Errorf("utime = %s, want %s", fields[11], tt.wantUTime)
			}
		})
	}
}

func TestTreeUsageOfSelf(t *testing.T) {
	u, err := TreeUsage(os.Getpid())
	if err != nil {
		t.Fatalf("TreeUsage: %v", err)
	}
	if u.Processes < 1 {
		t.Errorf("processes = %d, want at least 1", u.Processes)
	}
	if u.PeakRSSBytes <= 0 {
		t.Errorf("peak RSS = %d, want > 0", u.PeakRSSBytes)
	}
	if err := ResetPeakRSS(os.Getpid()); err != nil {
		t.Errorf("ResetPeakRSS: %v", err)
	}
}

func TestTreeUsageSplitsKernelTime(t *testing.T) {
	before, err := TreeUsage(os.Getpid())
	if err != nil {
		t.Fatalf("TreeUsage: %v", err)
	}

	// System calls spend kernel time: write to /dev/null until the kernel
	// has charged a few clock ticks of it.
	null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer null.Close()
	b := []byte{0}
	after := before
	for after.System-before.System < 3*time.Second/userHZ {
		for range 20000 {
			if _, err := null.Write(b); err != nil {
				t.Fatal(err)
			}
		}
		if after, err = TreeUsage(os.Getpid()); err != nil {
			t.Fatalf("TreeUsage: %v", err)
		}
	}

	if after.System > after.CPU {
		t.Errorf("kernel time %v exceeds the total %v", after.System, after.CPU)
	}
	if after.CPU-before.CPU < after.System-before.System {
		t.Errorf("total grew by %v, less than the kernel part's %v",
			after.CPU-before.CPU, after.System-before.System)
	}
}

func newTestEnv(t *testing.T) *Env {
	t.Helper()
	e, err := NewEnv("", filepath.Join(t.TempDir(), "run"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("NewEnv: %v", err)
	}
	t.Cleanup(e.StopAll)
	return e
}

func TestProcStopEndsProcess(t *testing.T) {
	e := newTestEnv(t)
	p, err := e.Start(ProcSpec{Name: "sleep", Path: "sleep", Args: []string{"60"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	if p.Exited() {
		t.Fatal("process exited at once")
	}
	if err := p.Stop(); err != nil {
		t.Errorf("Stop: %v", err)
	}
	if !p.Exited() {
		t.Error("process still running after Stop")
	}
	if _, err := os.Stat(e.Path("sleep.log")); err != nil {
		t.Errorf("log file: %v", err)
	}
}

func TestTreeUsageCountsChildren(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	e := newTestEnv(t)
	p, err := e.Start(ProcSpec{Name: "shell", Path: "sh", Args: []string{"-c", "sleep 60 & wait"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(processTree(p.PID())) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("tree of %d = %v, want the shell and its sleep", p.PID(), processTree(p.PID()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	tree := processTree(p.PID())
	if !slices.Contains(tree, p.PID()) {
		t.Errorf("tree %v lacks the shell %d", tree, p.PID())
	}
	u, err := TreeUsage(p.PID())
	if err != nil {
		t.Fatalf("TreeUsage: %v", err)
	}
	if u.Processes != 2 {
		t.Errorf("processes = %d, want 2", u.Processes)
	}
}

func TestOthersShareWithinRange(t *testing.T) {
	e := newTestEnv(t)
	before, err := e.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	time.Sleep(100 * time.Millisecond) // a span to measure, not synchronisation
	after, err := e.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if share := after.OthersShare(before); share < 0 || share > 1.05 {
		t.Errorf("others' share = %v, want within 0..1", share)
	}
}

func TestBusyShareSeesOwnWork(t *testing.T) {
	e := newTestEnv(t)
	before, err := e.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	// Keep one CPU busy in this process for 300 ms of wall time.
	end := time.Now().Add(300 * time.Millisecond)
	n := 0
	for time.Now().Before(end) {
		n++
	}
	after, err := e.Snapshot()
	if err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	// /proc/stat counts in ticks of 10 ms, and the machine may be busy
	// with other work too, so only a floor of half a CPU holds.
	floor := 0.5 / float64(runtime.NumCPU())
	if share := after.BusyShare(before); share < floor || share > 1.05 {
		t.Errorf("busy share = %v after %d spins, want within %v..1", share, n, floor)
	}
}

func TestNodeSetFaults(t *testing.T) {
	srv := ollamasim.New(ollamasim.Config{Models: []ollamasim.ModelSpec{{Name: Model}}})
	running, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	t.Cleanup(func() { running.Close() })
	// The node's own listener also serves the control routes.
	n := &Node{Name: "node1", URL: running.URL(), ControlURL: running.URL()}

	if err := n.SetFaults(context.Background(), `{"error_rate":0.5,"seed":7}`); err != nil {
		t.Fatalf("SetFaults: %v", err)
	}
	if got := srv.Faults().ErrorRate; got != 0.5 {
		t.Errorf("error rate = %v, want 0.5", got)
	}
	if err := n.SetFaults(context.Background(), `{"error_rate":2}`); err == nil {
		t.Error("SetFaults accepted an error rate of 2")
	}
	if err := n.SetFaults(context.Background(), `{}`); err != nil {
		t.Fatalf("clear faults: %v", err)
	}
	if got := srv.Faults().ErrorRate; got != 0 {
		t.Errorf("error rate after clearing = %v, want 0", got)
	}
}

func TestNodeStatsCountsRequests(t *testing.T) {
	srv := ollamasim.New(ollamasim.Config{Models: []ollamasim.ModelSpec{{Name: Model}}})
	running, err := srv.Start("127.0.0.1:0")
	if err != nil {
		t.Fatalf("start node: %v", err)
	}
	t.Cleanup(func() { running.Close() })
	n := &Node{Name: "node1", URL: running.URL(), ControlURL: running.URL()}
	if err := WaitReady(context.Background(), nil, n.URL+"/api/generate", WarmBody); err != nil {
		t.Fatalf("generate: %v", err)
	}
	st, err := n.Stats(context.Background())
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if got := st.Requests["/api/generate"]; got != 1 {
		t.Errorf("generate requests = %d, want 1", got)
	}
	if got := st.Loads[Model]; got != 1 {
		t.Errorf("loads of %s = %d, want 1 (loads: %v)", Model, got, st.Loads)
	}
}

func TestStartRedisAnswersPing(t *testing.T) {
	if _, err := findSystemBinary("redis-server"); err != nil {
		t.Skip(err)
	}
	e := newTestEnv(t)
	r, err := StartRedis(context.Background(), e)
	if err != nil {
		t.Fatalf("StartRedis: %v", err)
	}
	if !strings.HasPrefix(r.Addr, "127.0.0.1:") {
		t.Errorf("addr = %s, want 127.0.0.1", r.Addr)
	}
	if err := pingRedis(context.Background(), r.Addr); err != nil {
		t.Errorf("PING: %v", err)
	}
}

func TestConfigsFollowOptions(t *testing.T) {
	e := newTestEnv(t)
	fleet := &Fleet{Nodes: []*Node{{Name: "node1", Addr: "127.0.0.1:1", URL: "http://127.0.0.1:1"}}}
	failover := &Failover{
		HealthInterval: time.Second, HealthTimeout: 500 * time.Millisecond,
		Connect: time.Second, FirstByte: 3 * time.Second, Attempts: 3,
	}
	tests := []struct {
		name    string
		ext     string
		tmpl    string
		opts    Options
		want    []string
		notWant []string
	}{
		{"llmproxy default", ".yaml", llmproxyConfig, Options{},
			[]string{"policy: least_conn", "max_concurrent: 4096", "enabled: false", "first_byte: 120s"},
			[]string{"health:", "redis:"}},
		{"llmproxy scheduler", ".yaml", llmproxyConfig,
			Options{Policy: "round_robin", MaxConnsPerNode: 2},
			[]string{"policy: round_robin", "max_concurrent: 2"}, nil},
		{"llmproxy cache", ".yaml", llmproxyConfig, Options{Cache: true, RedisAddr: "127.0.0.1:6379"},
			[]string{"enabled: true", "addr: 127.0.0.1:6379"}, nil},
		{"llmproxy failover", ".yaml", llmproxyConfig, Options{Failover: failover},
			[]string{"interval: 1000ms", "timeout: 500ms", "attempts: 3", "first_byte: 3000ms"}, nil},
		{"nginx failover", ".conf", nginxConfig, Options{Failover: failover},
			[]string{"http_503 non_idempotent;", "proxy_next_upstream_tries 3;",
				"proxy_read_timeout 3000ms;"},
			[]string{"proxy_read_timeout 120s;"}},
		{"haproxy default", ".cfg", haproxyConfig, Options{},
			[]string{"timeout server 120s", "maxconn 4096\n"}, []string{"check", "retry-on"}},
		{"haproxy failover", ".cfg", haproxyConfig, Options{Failover: failover},
			[]string{"option httpchk GET /api/version", "retries 2", "option redispatch 1",
				"retry-on all-retryable-errors", "timeout server 3000ms",
				"maxconn 4096 check inter 1000ms fall 3 rise 2"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Name = "test"
			path, err := writeConfig(e, tt.ext, tt.tmpl, "127.0.0.1:2", fleet, tt.opts)
			if err != nil {
				t.Fatalf("writeConfig: %v", err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read config: %v", err)
			}
			text := string(data)
			for _, w := range tt.want {
				if !strings.Contains(text, w) {
					t.Errorf("config lacks %q:\n%s", w, text)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(text, w) {
					t.Errorf("config contains %q:\n%s", w, text)
				}
			}
		})
	}
}

func TestKillLeftoversEndsOrphans(t *testing.T) {
	e := newTestEnv(t)
	shell, err := e.Start(ProcSpec{Name: "shell", Path: "sh", Args: []string{"-c", "sleep 60 & wait"}})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(processTree(shell.PID())) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the shell started no child")
		}
		time.Sleep(10 * time.Millisecond)
	}
	orphan := processTree(shell.PID())[1]

	// SIGKILL leaves the shell's child running, as it leaves nginx workers.
	if err := shell.cmd.Process.Kill(); err != nil {
		t.Fatalf("kill shell: %v", err)
	}
	<-shell.done
	e.killLeftovers()
	for running(orphan) {
		if time.Now().After(deadline) {
			t.Fatalf("orphan %d still running after killLeftovers", orphan)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	fields, err := statFields(pid)
	return err == nil && fields[0] != "Z"
}
