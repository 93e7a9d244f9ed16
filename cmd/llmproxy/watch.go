package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// settleDelay is the time the config file must stay unchanged before it is
// reloaded. Editors write a file in several steps (truncate, write,
// rename), and reading it half way would reject a good file.
const settleDelay = 300 * time.Millisecond

// watchConfig sends on changed each time the file at path has changed and
// then stayed unchanged for settleDelay, until ctx ends. It watches the
// file's directory, because editors often replace the file rather than
// write it.
func watchConfig(ctx context.Context, path string, changed chan<- struct{}, log *slog.Logger) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		w.Close()
		return err
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		w.Close()
		return err
	}
	go func() {
		defer w.Close()
		var settle <-chan time.Time
		for {
			select {
			case <-ctx.Done():
				return
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if filepath.Clean(ev.Name) == abs && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
					settle = time.After(settleDelay)
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("config file watch failed", "path", path, "error", err)
			case <-settle:
				settle = nil
				select {
				case changed <- struct{}{}:
				default: // a reload is already pending
				}
			}
		}
	}()
	return nil
}
