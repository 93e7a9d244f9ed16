package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// profileWait bounds the wait for llmproxyprof to write a profile.
const profileWait = 10 * time.Second

// profiled reports whether t records CPU profiles: an llmproxy target
// started by an Env with ProfileDir set.
func (t *Target) profiled() bool {
	return t.Kind == LLMProxy && t.profileDir != ""
}

// StartProfile starts a CPU profile of a profiled target. Other targets
// ignore it.
func (t *Target) StartProfile() error {
	if !t.profiled() {
		return nil
	}
	if err := t.Proc.cmd.Process.Signal(syscall.SIGUSR1); err != nil {
		return fmt.Errorf("start profile: %w", err)
	}
	t.profiles++
	return nil
}

// StopProfile stops the profile started last and saves it as name.pprof
// in the Env's profile folder.
func (t *Target) StopProfile(name string) error {
	if !t.profiled() {
		return nil
	}
	if err := t.Proc.cmd.Process.Signal(syscall.SIGUSR2); err != nil {
		return fmt.Errorf("stop profile: %w", err)
	}
	written := filepath.Join(t.profileDir, fmt.Sprintf("cpu-%d.pprof", t.profiles))
	deadline := time.Now().Add(profileWait)
	for {
		if _, err := os.Stat(written); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("profile %s not written within %s (see llmproxy.log)", written, profileWait)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := os.Rename(written, filepath.Join(t.profileDir, name+".pprof")); err != nil {
		return fmt.Errorf("save profile: %w", err)
	}
	return nil
}
