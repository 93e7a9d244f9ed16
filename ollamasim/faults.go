package ollamasim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"
)

// Faults are the failures the node simulates. The zero value is a healthy
// node. Refuse and Hang apply to every route except the control routes. The
// other faults apply to inference routes only (/api/generate, /api/chat,
// /api/embed, /api/embeddings and the /v1 generation and embedding routes),
// so health checks and model listings keep working.
type Faults struct {
	// Refuse stops listening: new connections are refused and open ones are
	// closed. Clearing it listens again on the same address. On a Server
	// used as a bare http.Handler (not started with Start), each request's
	// connection is closed without a response instead.
	Refuse bool

	// Hang accepts requests and sends nothing until the fault clears or the
	// client goes away. Requests then proceed as usual.
	Hang bool

	// Busy makes inference requests fail with 503 and Ollama's "server
	// busy" error.
	Busy bool

	// ErrorRate is the share of requests, from 0 to 1, that fail with
	// ErrorStatus and ErrorMessage. 1 fails every request. The choice is
	// drawn from a generator seeded by Seed, so a fixed request order fails
	// the same requests every run.
	ErrorRate float64

	// ErrorStatus is the status of failed requests. Zero means 500.
	ErrorStatus int

	// ErrorMessage is the error text of failed requests. Empty means
	// "simulated failure".
	ErrorMessage string

	// Seed seeds the ErrorRate draws. Every SetFaults restarts the sequence.
	Seed uint64

	// CutAfterChunks closes the connection after that many frames of a
	// streamed response (NDJSON lines or SSE events), without the end of the
	// chunked body. Zero never cuts.
	CutAfterChunks int

	// FirstByteDelay delays every response before its first byte.
	FirstByteDelay time.Duration

	// TokenDelay slows generation by this much per token, on top of
	// Config.TokensPerSec.
	TokenDelay time.Duration

	// ClearAfter, when positive, clears all faults this long after they
	// were set, so a refusing node heals without a control request.
	ClearAfter time.Duration
}

// Validate reports every invalid field of f.
func (f Faults) Validate() error {
	var errs []error
	if f.ErrorRate < 0 || f.ErrorRate > 1 {
		errs = append(errs, fmt.Errorf("error rate: %v is outside 0..1", f.ErrorRate))
	}
	if f.ErrorStatus != 0 && (f.ErrorStatus < 400 || f.ErrorStatus > 599) {
		errs = append(errs, fmt.Errorf("error status: %d is not a 4xx or 5xx status", f.ErrorStatus))
	}
	if f.CutAfterChunks < 0 {
		errs = append(errs, fmt.Errorf("cut after chunks: %d is negative", f.CutAfterChunks))
	}
	if f.FirstByteDelay < 0 || f.TokenDelay < 0 || f.ClearAfter < 0 {
		errs = append(errs, errors.New("delays must not be negative"))
	}
	return errors.Join(errs...)
}

func (f Faults) errorStatus() int {
	if f.ErrorStatus == 0 {
		return http.StatusInternalServerError
	}
	return f.ErrorStatus
}

func (f Faults) errorMessage() string {
	if f.ErrorMessage == "" {
		return "simulated failure"
	}
	return f.ErrorMessage
}

// faultsJSON is the control endpoint's form of Faults: durations are Go
// duration strings such as "250ms".
type faultsJSON struct {
	Refuse         bool    `json:"refuse"`
	Hang           bool    `json:"hang"`
	Busy           bool    `json:"busy"`
	ErrorRate      float64 `json:"error_rate"`
	ErrorStatus    int     `json:"error_status"`
	ErrorMessage   string  `json:"error_message"`
	Seed           uint64  `json:"seed"`
	CutAfterChunks int     `json:"cut_after_chunks"`
	FirstByteDelay string  `json:"first_byte_delay"`
	TokenDelay     string  `json:"token_delay"`
	ClearAfter     string  `json:"clear_after"`
}

// MarshalJSON encodes f with snake_case keys and duration strings.
func (f Faults) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultsJSON{
		Refuse:         f.Refuse,
		Hang:           f.Hang,
		Busy:           f.Busy,
		ErrorRate:      f.ErrorRate,
		ErrorStatus:    f.ErrorStatus,
		ErrorMessage:   f.ErrorMessage,
		Seed:           f.Seed,
		CutAfterChunks: f.CutAfterChunks,
		FirstByteDelay: f.FirstByteDelay.String(),
		TokenDelay:     f.TokenDelay.String(),
		ClearAfter:     f.ClearAfter.String(),
	})
}

// UnmarshalJSON decodes the form MarshalJSON writes. Missing keys are zero;
// unknown keys are an error, so a misspelt fault is not silently ignored.
func (f *Faults) UnmarshalJSON(data []byte) error {
	var j faultsJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return err
	}
	*f = Faults{
		Refuse:         j.Refuse,
		Hang:           j.Hang,
		Busy:           j.Busy,
		ErrorRate:      j.ErrorRate,
		ErrorStatus:    j.ErrorStatus,
		ErrorMessage:   j.ErrorMessage,
		Seed:           j.Seed,
		CutAfterChunks: j.CutAfterChunks,
	}
	durations := []struct {
		name  string
		value string
		dst   *time.Duration
	}{
		{"first_byte_delay", j.FirstByteDelay, &f.FirstByteDelay},
		{"token_delay", j.TokenDelay, &f.TokenDelay},
		{"clear_after", j.ClearAfter, &f.ClearAfter},
	}
	for _, d := range durations {
		if d.value == "" {
			continue
		}
		v, err := time.ParseDuration(d.value)
		if err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
		*d.dst = v
	}
	return nil
}

// faultState contains the current faults and wakes waiters when they change.
type faultState struct {
	mu         sync.Mutex // guards the fields below
	current    Faults
	changed    chan struct{} // closed and replaced on every change
	rng        *rand.Rand
	gen        uint64 // counts changes, so a stale ClearAfter timer does nothing
	clearTimer *time.Timer
}

func newFaultState() *faultState {
	return &faultState{changed: make(chan struct{}), rng: newFaultRNG(0)}
}

func newFaultRNG(seed uint64) *rand.Rand {
	return rand.New(rand.NewPCG(seed, seed^0x5851f42d4c957f2d))
}

// get returns the current faults and a channel closed at the next change.
func (fs *faultState) get() (Faults, <-chan struct{}) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.current, fs.changed
}

// set replaces the faults. When f.ClearAfter is positive, it calls clear
// with the change number after that delay.
func (fs *faultState) set(f Faults, clear func(gen uint64)) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.current = f
	fs.rng = newFaultRNG(f.Seed)
	fs.gen++
	if fs.clearTimer != nil {
		fs.clearTimer.Stop()
		fs.clearTimer = nil
	}
	if f.ClearAfter > 0 && clear != nil {
		gen := fs.gen
		fs.clearTimer = time.AfterFunc(f.ClearAfter, func() { clear(gen) })
	}
	close(fs.changed)
	fs.changed = make(chan struct{})
}

// isCurrent reports whether gen is still the latest change.
func (fs *faultState) isCurrent(gen uint64) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.gen == gen
}

// drawFailure reports whether this request falls in the ErrorRate share.
func (fs *faultState) drawFailure() bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	switch rate := fs.current.ErrorRate; {
	case rate <= 0:
		return false
	case rate >= 1:
		return true
	default:
		return fs.rng.Float64() < rate
	}
}

// stop cancels a pending ClearAfter.
func (fs *faultState) stop() {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fs.gen++
	if fs.clearTimer != nil {
		fs.clearTimer.Stop()
	}
}
