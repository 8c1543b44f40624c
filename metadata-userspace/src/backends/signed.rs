//! The identity paths on top of a backend: the facts come from the
//! backend's own answers for the instance on the tap (with Nova: what Nova
//! answered), never from the guest's request; the signing happens on the
//! signing thread, at the lowest priority, off the serving threads.

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, StatusCode};
use log::error;

use super::{Backend, Reply};
use crate::{
    identity::{Facts, IdentityError, Route, SignedDocument, Signer, SigningThread, Subject},
    inventory::Identity,
};

impl Backend {
    /// The answer to an identity path; `None` to let the source answer
    /// (the unsigned document and its listing when no key is configured).
    pub(super) async fn signed(&self, who: &Identity, route: Route) -> Option<Reply> {
        let Some((signer, thread)) = &self.identity else {
            return match route {
                Route::Listing | Route::Document => None,
                _ => Some(Reply::status(StatusCode::NOT_FOUND)),
            };
        };
        Some(match route {
            Route::Listing => Reply::text("document\npkcs7\nrsa2048\nsignature".into()),
            Route::Token(Err(why)) => bad_request(&why),
            Route::Token(Ok((audience, nonce))) => match self.facts(who).await {
                Ok(facts) => {
                    let signer = Arc::clone(signer);
                    let token = thread
                        .run(move || signer.token(&facts.subject, &audience, nonce.as_ref()))
                        .await;
                    match token {
                        Some(Ok(token)) => Reply::text(token),
                        Some(Err(err)) => failed(&err.into()),
                        None => thread_gone(),
                    }
                }
                Err(reply) => reply,
            },
            route => match self.document(who, signer, thread).await {
                Ok(signed) => document_reply(&signed, &route),
                Err(reply) => reply,
            },
        })
    }

    /// This instance's signed document, made on the signing thread when
    /// its facts are new.
    async fn document(
        &self,
        who: &Identity,
        signer: &Arc<Signer>,
        thread: &SigningThread,
    ) -> Result<Arc<SignedDocument>, Reply> {
        let facts = self.facts(who).await?;
        if let Some(signed) = signer.cached(&facts) {
            return Ok(signed);
        }
        let signer = Arc::clone(signer);
        match thread.run(move || signer.sign(facts)).await {
            Some(Ok(signed)) => Ok(signed),
            Some(Err(err)) => Err(failed(&err)),
            None => Err(thread_gone()),
        }
    }

    /// What the backend says about `who`: its OpenStack metadata and its
    /// EC2 instance and image ids. A backend error is the answer.
    async fn facts(&self, who: &Identity) -> Result<Facts, Reply> {
        let meta = self.get(who, "/openstack/latest/meta_data.json").await?;
        let meta: serde_json::Value =
            serde_json::from_slice(&meta).map_err(|_| Reply::status(StatusCode::BAD_GATEWAY))?;
        let text = |key: &str| meta[key].as_str().unwrap_or_default().to_owned();
        let subject = Subject {
            // The uuid is the port record's: the instance on this tap.
            instance_id: who.instance.id.clone(),
            project_id: who.instance.project_id.clone(),
            availability_zone: text("availability_zone"),
            instance_name: text("name"),
        };
        let ec2_instance_id = self.get(who, "/latest/meta-data/instance-id").await?;
        let image_id = self
            .get(who, "/latest/meta-data/ami-id")
            .await
            .unwrap_or_default();
        Ok(Facts {
            subject,
            ec2_instance_id: String::from_utf8_lossy(&ec2_instance_id).into_owned(),
            image_id: String::from_utf8_lossy(&image_id).into_owned(),
        })
    }

    /// A GET of `path` from the source, for `who`; anything but 200 is
    /// passed on as the answer.
    async fn get(&self, who: &Identity, path: &str) -> Result<Bytes, Reply> {
        let (parts, ()) = http::Request::get(path)
            .body(())
            .expect("a static path is a valid request")
            .into_parts();
        debug_assert_eq!(parts.method, Method::GET);
        let reply = self.source.handle(who, &parts, Bytes::new()).await;
        if reply.status == StatusCode::OK {
            Ok(reply.body)
        } else {
            Err(reply)
        }
    }
}

fn document_reply(signed: &SignedDocument, route: &Route) -> Reply {
    match route {
        Route::Document => Reply::json_bytes(signed.document.clone()),
        Route::Signature => Reply::text_bytes(signed.signature.clone()),
        Route::Pkcs7 => match &signed.pkcs7 {
            Some(pkcs7) => Reply::text_bytes(pkcs7.clone()),
            // No certificate configured: only the plain signature exists.
            None => Reply::status(StatusCode::NOT_FOUND),
        },
        Route::Listing | Route::Token(_) => Reply::status(StatusCode::NOT_FOUND),
    }
}

fn bad_request(why: &str) -> Reply {
    let mut reply = Reply::status(StatusCode::BAD_REQUEST);
    reply.body = Bytes::from(format!("400 Bad Request: {why}\n"));
    reply
}

fn failed(err: &IdentityError) -> Reply {
    error!("signing an identity answer: {err}");
    Reply::status(StatusCode::INTERNAL_SERVER_ERROR)
}

fn thread_gone() -> Reply {
    error!("the identity signing thread is gone (it panicked); signed answers fail until restart");
    Reply::status(StatusCode::INTERNAL_SERVER_ERROR)
}
