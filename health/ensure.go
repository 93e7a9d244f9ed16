package health

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fastjson"

	"github.com/llmproxy/llmproxy/balancer"
	"github.com/llmproxy/llmproxy/internal/wire"
)

// pullTimeout is the maximum duration of one model pull started by
// models.ensure.
const pullTimeout = 2 * time.Hour

// ensureModels starts a pull of each model in ensure that the node lacks.
// The node gets traffic for a model only once its inventory lists it,
// which happens on the refresh after the pull.
func (c *Checker) ensureModels(n *balancer.Node, ensure []string) {
	for _, name := range ensure {
		model := wire.NormalizeModel(name)
		if n.HasModel(model) {
			continue
		}
		key := n.Name + "\x00" + model
		c.pullMu.Lock()
		busy := c.pulling[key]
		c.pulling[key] = true
		c.pullMu.Unlock()
		if busy {
			continue
		}
		// The pull runs on the checker's own context, not the probe's:
		// a probe made for App.Start or App.Reload ends long before a pull.
		c.wg.Add(1)
		go func() {
			defer c.wg.Done()
			defer func() {
				c.pullMu.Lock()
				delete(c.pulling, key)
				c.pullMu.Unlock()
			}()
			c.pull(c.pullCtx, n, model)
		}()
	}
}

// pull pulls model onto n, logging progress, then refreshes the node.
func (c *Checker) pull(ctx context.Context, n *balancer.Node, model string) {
	c.log.Info("pulling missing model", "node", n.Name, "model", model)
	start := c.now()
	if err := c.streamPull(ctx, n, model); err != nil {
		c.log.Warn("model pull failed", "node", n.Name, "model", model, "error", err)
		return
	}
	if err := c.Refresh(ctx, n); err != nil {
		c.log.Warn("inventory refresh after pull failed", "node", n.Name, "error", err)
	}
	c.log.Info("model pulled", "node", n.Name, "model", model,
		"duration", c.now().Sub(start).Round(time.Millisecond))
}

// streamPull runs POST /api/pull on n and reads its progress lines. It
// uses net/http because a pull is a long, rare call that must stop when ctx
// ends, which fasthttp's client cannot do mid-body.
func (c *Checker) streamPull(ctx context.Context, n *balancer.Node, model string) error {
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	body := strings.NewReader(`{"model":` + strconv.Quote(model) + `,"stream":true}`)
	req, err := http.NewRequestWithContext(ctx, "POST", n.URL.String()+"/api/pull", body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("POST /api/pull: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("POST /api/pull: status %d", resp.StatusCode)
	}
	sc := bufio.NewScanner(resp.Body)
	last := ""
	for sc.Scan() {
		line := sc.Bytes()
		if msg := fastjson.GetString(line, "error"); msg != "" {
			return fmt.Errorf("POST /api/pull: node reported error: %s", msg)
		}
		status := fastjson.GetString(line, "status")
		if status != last {
			c.log.Debug("pull progress", "node", n.Name, "model", model, "status", status)
			last = status
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read /api/pull progress: %w", err)
	}
	if last != "success" {
		return fmt.Errorf("POST /api/pull: ended without status \"success\" (last status %q)", last)
	}
	return nil
}
