// Package harness starts and stops the processes of a benchmark run:
// simulated Ollama nodes and the proxies under test, all bound to
// 127.0.0.1. It writes their configs and logs to one run folder and reads
// their CPU time and memory from /proc.
package harness

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// stopTimeout is how long Stop waits after SIGTERM before it sends SIGKILL.
const stopTimeout = 5 * time.Second

// Env is one benchmark run: where the binaries are, the folder for
// configs and logs, and every process started, so that StopAll can end
// them even when a scenario fails half way.
type Env struct {
	// BinDir contains the llmproxy and ollamasim binaries.
	BinDir string
	// Dir receives configs and logs. NewEnv creates it.
	Dir string
	// ProfileDir, when set, makes llmproxy targets run as llmproxyprof,
	// which writes CPU profiles there on request.
	ProfileDir string
	Log        *slog.Logger

	// procsMu guards procs.
	procsMu sync.Mutex
	procs   []*Proc
}

// NewEnv creates dir, emptying it first, and returns an Env that starts
// binaries from binDir. It first kills what is left of an earlier run in
// the same folder that was itself killed before it could stop its
// processes.
func NewEnv(binDir, dir string, log *slog.Logger) (*Env, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("resolve run folder: %w", err)
	}
	e := &Env{BinDir: binDir, Dir: abs, Log: log}
	e.killLeftovers()
	if err := os.RemoveAll(abs); err != nil {
		return nil, fmt.Errorf("clear run folder: %w", err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create run folder: %w", err)
	}
	return e, nil
}

// Path returns the path of name inside the run folder.
func (e *Env) Path(name string) string { return filepath.Join(e.Dir, name) }

// Proc is a process started by an Env.
type Proc struct {
	Name string
	cmd  *exec.Cmd
	done chan struct{}
	// waitErr is the result of cmd.Wait, read after done is closed.
	waitErr error
}

// ProcSpec describes a process to start.
type ProcSpec struct {
	// Name labels the process in logs and names its log file, Name.log.
	Name string
	Path string
	Args []string
	// Env is added to the benchmark's own environment.
	Env []string
}

// Start runs spec with stdout and stderr sent to a log file in the run
// folder. The process gets SIGKILL if the benchmark's thread that started
// it dies, a backstop for a crash that skips StopAll.
func (e *Env) Start(spec ProcSpec) (*Proc, error) {
	logFile, err := os.Create(e.Path(spec.Name + ".log"))
	if err != nil {
		return nil, fmt.Errorf("create log of %s: %w", spec.Name, err)
	}
	defer logFile.Close()

	cmd := exec.Command(spec.Path, spec.Args...)
	cmd.Env = append(os.Environ(), spec.Env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", spec.Name, err)
	}
	p := &Proc{Name: spec.Name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()

	e.procsMu.Lock()
	e.procs = append(e.procs, p)
	e.procsMu.Unlock()
	e.Log.Debug("process started", "name", spec.Name, "pid", p.PID(), "args", spec.Args)
	return p, nil
}

// PID returns the process ID.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop sends SIGTERM, waits up to stopTimeout, then sends SIGKILL. A
// process that already ended is left alone. It returns the exit error
// only when the process had to be killed.
func (p *Proc) Stop() error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", p.Name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(stopTimeout):
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", p.Name, err)
	}
	<-p.done
	return fmt.Errorf("%s ignored SIGTERM for %s and was killed", p.Name, stopTimeout)
}

// StopAll stops every process the Env started that is still running, the
// newest first, so that proxies stop before the nodes behind them.
func (e *Env) StopAll() {
	e.procsMu.Lock()
	procs := e.procs
	e.procs = nil
	e.procsMu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Stop(); err != nil {
			e.Log.Warn("stop process", "name", procs[i].Name, "err", err)
		}
	}
	e.killLeftovers()
}
