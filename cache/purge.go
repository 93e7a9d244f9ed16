package cache

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// Purges reach every instance that shares the Redis through one pub/sub
// channel. Purge publishes a purgeMessage on it after purging L2, and each
// cache with L2 subscribes at New and applies the messages of other
// instances to its own L1.

// purgeMessage is the JSON payload published on the purge channel.
type purgeMessage struct {
	// Model is the normalized model whose entries are purged, or "" for
	// every entry.
	Model string `json:"model"`
	// Instance is the instanceID of the publishing cache. A message without
	// it comes from outside llmproxy and is applied by every instance.
	Instance string `json:"instance,omitempty"`
}

// purgeChannelName returns the purge channel of an L2 whose keys start with
// prefix in Redis database db. Redis delivers a published message to the
// subscribers of every database, so the name includes the database number
// to keep deployments that differ only in redis.db apart.
func purgeChannelName(prefix string, db int) string {
	return prefix + "purge:" + strconv.Itoa(db)
}

// newInstanceID returns a random identifier for one cache's purge messages.
func newInstanceID() string { return rand.Text() }

// startPurgeSubscriber subscribes to the purge channel and starts the
// goroutine that applies other instances' purges. It waits at most
// redis.timeout for the subscription confirmation. When Redis does not
// confirm in time, the failure is recorded like any failed Redis call, and
// go-redis keeps trying to subscribe in the background.
func (c *Cache) startPurgeSubscriber() {
	t := c.l2
	// Without a channel, Subscribe only creates the PubSub and does not
	// connect.
	t.subscription = t.rdb.Subscribe(context.Background())
	c.redisCall(context.Background(), "subscribe", func(ctx context.Context) error {
		if err := t.subscription.Subscribe(ctx, t.purgeChannel); err != nil {
			return err
		}
		reply, err := t.subscription.ReceiveTimeout(ctx, t.timeout)
		if err != nil {
			return err
		}
		if _, ok := reply.(*redis.Subscription); !ok {
			return fmt.Errorf("unexpected reply %v to SUBSCRIBE %s", reply, t.purgeChannel)
		}
		return nil
	})

	// The confirmation read above does not reach this Go channel. Every
	// *redis.Subscription on it is a confirmation that came too late for
	// that read or one from a later connection, and purges may have been
	// missed before either.
	messages := t.subscription.ChannelWithSubscriptions()
	t.subscriberDone = make(chan struct{})
	go c.receivePurges(messages)
}

// stopPurgeSubscriber closes the subscription and waits until receivePurges
// has returned, which it does once go-redis has closed the Go channel. The
// health-check goroutine of go-redis ends on its own shortly after.
func (c *Cache) stopPurgeSubscriber() {
	_ = c.l2.subscription.Close()
	<-c.l2.subscriberDone
}

// receivePurges applies the messages of the purge channel until go-redis
// closes it.
//
// go-redis reconnects a dropped subscription by itself and subscribes again.
// Purges published while the connection was down are lost, and the
// instance cannot tell which ones, so a subscription confirmation that
// arrives here clears the whole L1. Entries that were not purged stay in
// L2, so each costs one L2 lookup to come back into L1.
func (c *Cache) receivePurges(messages <-chan any) {
	defer close(c.l2.subscriberDone)
	for msg := range messages {
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			c.purgeMu.Lock()
			c.epochs.bump("")
			c.purgeL1("")
			c.purgeMu.Unlock()
			c.log.Info("cache purge channel subscribed after an interruption, l1 cleared because purges may have been missed",
				"channel", m.Channel)
		case *redis.Message:
			c.applyPurgeMessage(m.Payload)
		}
	}
}

// applyPurgeMessage decodes a purge message and purges L1 as it requests,
// unless this instance published it. Its own Purge has already purged L1,
// and applying the message later could remove entries stored since.
func (c *Cache) applyPurgeMessage(payload string) {
	var msg purgeMessage
	if err := json.Unmarshal([]byte(payload), &msg); err != nil {
		c.log.Warn("invalid cache purge message ignored",
			"channel", c.l2.purgeChannel, "bytes", len(payload), "error", err)
		return
	}
	if msg.Instance == c.l2.instanceID {
		return
	}
	model := NormalizeModel(msg.Model)
	c.purgeMu.Lock()
	c.epochs.bump(model)
	c.purgeL1(model)
	c.purgeMu.Unlock()
	c.log.Info("cache l1 purged by another instance", "model", model, "instance", msg.Instance)
}

// publishPurge publishes the purge of model ("" for all) on the purge
// channel, waiting at most redis.timeout.
func (c *Cache) publishPurge(ctx context.Context, model string) error {
	payload, err := json.Marshal(purgeMessage{Model: model, Instance: c.l2.instanceID})
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, c.l2.timeout)
	defer cancel()
	return c.l2.rdb.Publish(cctx, c.l2.purgeChannel, payload).Err()
}

// purgeL1 removes every L1 record, when model is "", or those of model. The
// caller holds purgeMu.
func (c *Cache) purgeL1(model string) {
	if model == "" {
		c.l1.clear()
	} else {
		c.l1.purgeModel(model)
	}
}
