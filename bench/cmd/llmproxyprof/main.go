// Command llmproxyprof runs the llmproxy server from a config file, as
// "llmproxy serve -config FILE" does, and records CPU profiles on demand:
// SIGUSR1 starts a profile and SIGUSR2 stops it and writes it to the next
// file DIR/cpu-N.pprof. benchrun -profile starts it in place of llmproxy
// to profile each measured phase. llmproxy serves CPU profiles under
// /admin/debug/pprof/profile only with admin.token or admin.listen set,
// and only for a fixed number of seconds, while the signals start and stop
// a profile at the bounds of a phase.
//
// Usage:
//
//	llmproxyprof -config FILE -profile-dir DIR
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/llmproxy/llmproxy/app"
	"github.com/llmproxy/llmproxy/config"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "llmproxyprof:", err)
		}
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("llmproxyprof", flag.ContinueOnError)
	path := fs.String("config", "", "llmproxy YAML configuration `file`")
	dir := fs.String("profile-dir", "", "`folder` for the CPU profiles")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" || *dir == "" {
		return fmt.Errorf("-config and -profile-dir are required")
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	a, err := app.Start(ctx, cfg, log)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	profileOnSignal(ctx, *dir, log)

	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return a.Shutdown(sctx)
}

// profileOnSignal starts and stops CPU profiles on SIGUSR1 and SIGUSR2
// until ctx ends, and stops a profile still running then.
func profileOnSignal(ctx context.Context, dir string, log *slog.Logger) {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(signals)
	var file *os.File
	count := 0
	for {
		select {
		case <-ctx.Done():
			stopProfile(file, log)
			return
		case sig := <-signals:
			if sig == syscall.SIGUSR1 && file == nil {
				count++
				file = startProfile(filepath.Join(dir, fmt.Sprintf("cpu-%d.pprof", count)), log)
			} else if sig == syscall.SIGUSR2 {
				stopProfile(file, log)
				file = nil
			}
		}
	}
}

func startProfile(path string, log *slog.Logger) *os.File {
	// The profile is written to a temporary name and renamed when
	// complete, so that a reader never sees half a profile.
	f, err := os.Create(path + ".tmp")
	if err != nil {
		log.Error("create profile", "path", path, "err", err)
		return nil
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Error("start profile", "path", path, "err", err)
		f.Close()
		return nil
	}
	return f
}

func stopProfile(f *os.File, log *slog.Logger) {
	if f == nil {
		return
	}
	pprof.StopCPUProfile()
	tmp := f.Name()
	if err := f.Close(); err != nil {
		log.Error("write profile", "path", tmp, "err", err)
		return
	}
	if err := os.Rename(tmp, tmp[:len(tmp)-len(".tmp")]); err != nil {
		log.Error("rename profile", "path", tmp, "err", err)
	}
}
