//! Events recorded in the background, like client-go's event broadcaster: the caller's work
//! (a binding, a pod start) never waits for its event, and under a burst beyond the bounded
//! queue events are dropped, never the work. One recorder per component, no process-global.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

use crate::Api;

/// The object an event is about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ObjectRef {
    /// The reference to an object as the API returned it.
    pub fn of(obj: &serde_json::Value) -> ObjectRef {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
        ObjectRef {
            api_version: s(&obj["apiVersion"]),
            kind: s(&obj["kind"]),
            namespace: s(&obj["metadata"]["namespace"]),
            name: s(&obj["metadata"]["name"]),
            uid: s(&obj["metadata"]["uid"]),
        }
    }
}

#[derive(Clone)]
pub struct EventRecorder {
    tx: mpsc::SyncSender<(String, Event)>,
    component: String,
    host: Option<String>,
}

/// client-go's broadcaster queues up to 1,000 events.
const QUEUE: usize = 1000;

impl EventRecorder {
    /// Starts two writers (so one slow write does not hold the queue) posting through `api`.
    pub fn spawn(api: Arc<dyn Api>, component: &str, host: Option<&str>) -> EventRecorder {
        let (tx, rx) = mpsc::sync_channel::<(String, Event)>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..2 {
            let (api, rx) = (api.clone(), rx.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("events-{i}"))
                .spawn(move || {
                    loop {
                        let next = rx.lock().map(|r| r.recv());
                        let Ok(Ok((path, ev))) = next else {
                            return;
                        };
                        let body = match serde_json::to_value(&ev) {
                            Ok(b) => b,
                            Err(e) => {
                                tracing::debug!(error = %e, "encoding an event");
                                continue;
                            }
                        };
                        if let Err(e) = api.create(&path, &body) {
                            tracing::debug!(error = %e, "recording an event");
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "starting an event writer");
            }
        }
        EventRecorder {
            tx,
            component: component.to_string(),
            host: host.map(String::from),
        }
    }

    /// The same queue, reporting as another component (a scheduler and a controller in one
    /// process share one recorder).
    pub fn with_component(&self, component: &str) -> EventRecorder {
        EventRecorder {
            tx: self.tx.clone(),
            component: component.to_string(),
            host: self.host.clone(),
        }
    }

    /// Queues an event (`type_` Normal or Warning); dropped when the queue is full.
    pub fn record(&self, obj: &ObjectRef, type_: &str, reason: &str, message: &str) {
        let ev = self.event(obj, type_, reason, message);
        let path = format!("/api/v1/namespaces/{}/events", obj.namespace);
        if self.tx.try_send((path, ev)).is_err() {
            tracing::debug!(reason, "event queue full: event dropped");
        }
    }

    /// The Event object `record` posts.
    pub fn event(&self, obj: &ObjectRef, type_: &str, reason: &str, message: &str) -> Event {
        // k8s-openapi's Time wraps its own timestamp type; going through RFC 3339 keeps this
        // crate independent of which one.
        let now = crate::now_rfc3339().parse().ok().map(Time);
        Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.", obj.name)),
                namespace: Some(obj.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(obj.api_version.clone()),
                kind: Some(obj.kind.clone()),
                namespace: Some(obj.namespace.clone()),
                name: Some(obj.name.clone()),
                uid: Some(obj.uid.clone()),
                ..Default::default()
            },
            type_: Some(type_.to_string()),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: self.host.clone(),
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: self.host.clone(),
            first_timestamp: now.clone(),
            last_timestamp: now,
            count: Some(1),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeApi;

    #[test]
    fn recorded_events_reach_the_api_in_the_background() {
        let api = Arc::new(FakeApi::default());
        let r = EventRecorder::spawn(api.clone(), "moat-agent", Some("n1"));
        let pod = ObjectRef {
            api_version: "v1".into(),
            kind: "Pod".into(),
            namespace: "ns".into(),
            name: "web".into(),
            uid: "u1".into(),
        };
        r.record(&pod, "Warning", "Failed", "boom");
        let mut found = None;
        for _ in 0..100 {
            found = api.objects_under("/api/v1/namespaces/ns/events").pop();
            if found.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let ev = found.expect("the event was written");
        assert_eq!(ev["reason"], "Failed");
        assert_eq!(ev["involvedObject"]["uid"], "u1");
        assert_eq!(ev["source"]["host"], "n1");
    }
}
