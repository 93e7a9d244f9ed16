package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Conversation is one multi-turn chat of a trace. Each turn sends the
// whole conversation so far, as chat clients do: the system message, the
// earlier user messages and the model's replies, and the new user message.
type Conversation struct {
	// Start is when the first turn is due, from the start of the trace.
	Start time.Duration
	Model string
	// Class is sent as X-Priority.
	Class  string
	System string
	// Turns are the user messages, one per request.
	Turns []string
	// Think is the pause between a response and the next turn, one per
	// turn after the first.
	Think []time.Duration
}

// TurnResult is the outcome of one turn.
type TurnResult struct {
	Class string
	Model string
	// TTFT is the time from sending the request to the first line of the
	// response, which carries the first token.
	TTFT time.Duration
	// PromptEvalCount is the prompt tokens the node evaluated, from the
	// response's final line: the prompt minus what the node's cache held.
	PromptEvalCount int
	// Done is when the response ended, from the start of the trace.
	Done time.Duration
	// Err is set when the turn failed or the trace's deadline cut it.
	Err error
}

// Trace is a set of conversations sent to one base URL.
type Trace struct {
	BaseURL       string
	Conversations []Conversation
	// Deadline bounds the whole trace: turns not complete by then end
	// with ErrDeadline, and turns not sent are never sent.
	Deadline time.Duration
}

// ErrDeadline marks a turn that the trace's deadline cut or kept from
// being sent.
var ErrDeadline = errors.New("trace deadline passed")

// ErrSkipped marks a turn not sent because an earlier turn of its
// conversation failed.
var ErrSkipped = errors.New("not sent after an earlier turn failed")

// RunTrace sends every conversation of tr, each from its own goroutine,
// and returns the results of all turns, sent or not, in conversation
// order.
func RunTrace(ctx context.Context, tr Trace) []TurnResult {
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		MaxIdleConnsPerHost: len(tr.Conversations),
		DisableCompression:  true,
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport}
	start := time.Now()
	ctx, cancel := context.WithDeadline(ctx, start.Add(tr.Deadline))
	defer cancel()

	results := make([][]TurnResult, len(tr.Conversations))
	var wg sync.WaitGroup
	for i, c := range tr.Conversations {
		wg.Go(func() {
			results[i] = runConversation(ctx, client, tr.BaseURL, c, start)
		})
	}
	wg.Wait()
	var all []TurnResult
	for _, r := range results {
		all = append(all, r...)
	}
	return all
}

// chatMessage is one message of an /api/chat request.
type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

// runConversation sends the turns of c one after another.
func runConversation(ctx context.Context, client *http.Client, base string, c Conversation,
	start time.Time) []TurnResult {
	results := make([]TurnResult, len(c.Turns))
	for i := range results {
		results[i] = TurnResult{Class: c.Class, Model: c.Model, Err: ErrDeadline}
	}
	messages := []chatMessage{{Role: "system", Content: c.System}}
	due := start.Add(c.Start)
	for i, text := range c.Turns {
		if i > 0 {
			due = time.Now().Add(c.Think[i-1])
		}
		if !sleepUntil(ctx, due) {
			break
		}
		messages = append(messages, chatMessage{Role: "user", Content: text})
		reply, res := sendTurn(ctx, client, base, c, messages)
		res.Done = time.Since(start)
		results[i] = res
		if res.Err != nil && ctx.Err() != nil {
			results[i].Err = ErrDeadline
			break
		}
		if res.Err != nil {
			// A conversation stops at a failed turn, as a user would.
			for j := i + 1; j < len(results); j++ {
				results[j].Err = ErrSkipped
			}
			break
		}
		messages = append(messages, chatMessage{Role: "assistant", Content: reply})
	}
	return results
}

// sleepUntil waits until t and reports whether ctx is still live.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}

// chatLine is the part of an /api/chat stream line that a turn reads.
type chatLine struct {
	Message         chatMessage `json:"message"`
	Done            bool        `json:"done"`
	PromptEvalCount int         `json:"prompt_eval_count"`
	Error           string      `json:"error"`
}

// sendTurn sends one streamed /api/chat request and returns the text of
// the reply.
func sendTurn(ctx context.Context, client *http.Client, base string, c Conversation,
	messages []chatMessage) (string, TurnResult) {
	res := TurnResult{Class: c.Class, Model: c.Model}
	body, err := json.Marshal(map[string]any{"model": c.Model, "messages": messages, "stream": true})
	if err != nil {
		res.Err = fmt.Errorf("encode request: %w", err)
		return "", res
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/chat",
		bytes.NewReader(body))
	if err != nil {
		res.Err = fmt.Errorf("build request: %w", err)
		return "", res
	}
	req.Header.Set("Content-Type", "application/json")
	if c.Class != "" {
		req.Header.Set("X-Priority", c.Class)
	}
	sent := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		res.Err = err
		return "", res
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		res.Err = &StatusError{Status: resp.StatusCode, Body: string(bytes.TrimSpace(msg))}
		return "", res
	}
	reply, err := readReply(resp.Body, sent, &res)
	res.Err = err
	return reply, res
}

// readReply reads an NDJSON chat stream to its final line, and records
// the time to the first line and the prompt tokens evaluated in res.
func readReply(body io.Reader, sent time.Time, res *TurnResult) (string, error) {
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 0, 4096), maxLineBytes)
	var reply bytes.Buffer
	first := true
	for sc.Scan() {
		if first {
			res.TTFT = time.Since(sent)
			first = false
		}
		var line chatLine
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			return "", fmt.Errorf("decode stream line: %w", err)
		}
		if line.Error != "" {
			return "", fmt.Errorf("error in stream: %s", line.Error)
		}
		reply.WriteString(line.Message.Content)
		if line.Done {
			res.PromptEvalCount = line.PromptEvalCount
			return reply.String(), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read stream: %w", err)
	}
	return "", errNoFinalLine
}
