//! Edits of fleet.toml that keep what a person wrote: comments, order,
//! layout. A deploy, a scale and a rollback are each one of these on the
//! file's text (toml_edit); what is written is checked by [`super::parse`]
//! first, by the caller.

use toml_edit::{DocumentMut, Item, Value};

/// One change to fleet.toml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Set `image` of each named service of `app`.
    Images {
        app: String,
        images: Vec<(String, String)>,
    },
    /// Set `instances` of `app`.
    Scale { app: String, instances: u32 },
    /// Put back `app` as it stands in `from` (an earlier text of the file).
    Restore { app: String, from: String },
}

impl Edit {
    pub fn app(&self) -> &str {
        match self {
            Edit::Images { app, .. } | Edit::Scale { app, .. } | Edit::Restore { app, .. } => app,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    #[error("fleet.toml is not valid TOML: {0}")]
    Syntax(String),
    #[error("fleet.toml has no app {0:?}")]
    NoApp(String),
    #[error("app {app:?} has no service {service:?}")]
    NoService { app: String, service: String },
    #[error("the earlier fleet.toml has no app {0:?} to restore")]
    NothingToRestore(String),
}

/// `text` with `edit` made, everything else as it was.
pub fn apply(text: &str, edit: &Edit) -> Result<String, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Syntax(e.message().to_owned()))?;
    match edit {
        Edit::Images { app, images } => {
            let services = app_item(&mut doc, app)?
                .get_mut("services")
                .and_then(Item::as_table_like_mut)
                .ok_or_else(|| EditError::NoApp(app.clone()))?;
            for (service, image) in images {
                let svc = services
                    .get_mut(service)
                    .and_then(Item::as_table_like_mut)
                    .ok_or_else(|| EditError::NoService {
                        app: app.clone(),
                        service: service.clone(),
                    })?;
                set(svc, "image", Value::from(image.as_str()));
            }
        }
        Edit::Scale { app, instances } => {
            let table = app_item(&mut doc, app)?;
            set(table, "instances", Value::from(i64::from(*instances)));
        }
        Edit::Restore { app, from } => {
            let old: DocumentMut = from
                .parse()
                .map_err(|e: toml_edit::TomlError| EditError::Syntax(e.message().to_owned()))?;
            let before = old
                .get("apps")
                .and_then(Item::as_table_like)
                .and_then(|apps| apps.get(app))
                .cloned()
                .ok_or_else(|| EditError::NothingToRestore(app.clone()))?;
            let apps = doc
                .get_mut("apps")
                .and_then(Item::as_table_like_mut)
                .ok_or_else(|| EditError::NoApp(app.clone()))?;
            apps.insert(app, before);
        }
    }
    Ok(doc.to_string())
}

/// The table of `app` (`[apps.APP]`, or an inline table).
fn app_item<'d>(
    doc: &'d mut DocumentMut,
    app: &str,
) -> Result<&'d mut dyn toml_edit::TableLike, EditError> {
    doc.get_mut("apps")
        .and_then(Item::as_table_like_mut)
        .and_then(|apps| apps.get_mut(app))
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| EditError::NoApp(app.to_owned()))
}

/// Sets `key` to `value`, keeping the comments and spacing around the old
/// value.
fn set(table: &mut dyn toml_edit::TableLike, key: &str, mut value: Value) {
    if let Some(old) = table.get(key).and_then(Item::as_value) {
        *value.decor_mut() = old.decor().clone();
    }
    table.insert(key, Item::Value(value));
}

/// The text of `app` in fleet.toml `text` (what a change replaced, for
/// the history), if it has one.
pub fn app_text(text: &str, app: &str) -> Option<String> {
    let doc: DocumentMut = text.parse().ok()?;
    let item = doc.get("apps")?.as_table_like()?.get(app)?.clone();
    let mut out = DocumentMut::new();
    let mut apps = toml_edit::Table::new();
    apps.set_implicit(true);
    apps.insert(app, item);
    out.insert("apps", Item::Table(apps));
    Some(out.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = r#"# The blog, as the team wrote it.
[apps.blog]
instances = 2 # two, for the morning rush

[apps.blog.services.web]
image = "registry.example.com/blog:1.4"   # keep in step with queue
port = 8080

[apps.blog.services.queue]
image = "registry.example.com/blog:1.4"
command = ["php", "artisan", "queue:work"]

[apps.shop]
services.web = { image = "shop:7", port = 80 }
"#;

    fn changed_lines(a: &str, b: &str) -> Vec<(String, String)> {
        a.lines()
            .zip(b.lines())
            .filter(|(x, y)| x != y)
            .map(|(x, y)| (x.to_owned(), y.to_owned()))
            .collect()
    }

    #[test]
    fn a_deploy_changes_the_image_lines_and_nothing_else() {
        let edit = Edit::Images {
            app: "blog".into(),
            images: vec![("web".into(), "registry.example.com/blog:1.5".into())],
        };
        let out = apply(FLEET, &edit).unwrap();
        assert_eq!(out.lines().count(), FLEET.lines().count());
        assert_eq!(
            changed_lines(FLEET, &out),
            [(
                r#"image = "registry.example.com/blog:1.4"   # keep in step with queue"#.to_owned(),
                r#"image = "registry.example.com/blog:1.5"   # keep in step with queue"#.to_owned()
            )]
        );
        // Inline tables too.
        let inline = Edit::Images {
            app: "shop".into(),
            images: vec![("web".into(), "shop:8".into())],
        };
        let out = apply(FLEET, &inline).unwrap();
        assert_eq!(
            changed_lines(FLEET, &out),
            [(
                r#"services.web = { image = "shop:7", port = 80 }"#.to_owned(),
                r#"services.web = { image = "shop:8", port = 80 }"#.to_owned()
            )]
        );
    }

    #[test]
    fn a_scale_keeps_its_comment_and_a_rollback_puts_the_app_back() {
        let out = apply(
            FLEET,
            &Edit::Scale {
                app: "blog".into(),
                instances: 5,
            },
        )
        .unwrap();
        assert_eq!(
            changed_lines(FLEET, &out),
            [(
                "instances = 2 # two, for the morning rush".to_owned(),
                "instances = 5 # two, for the morning rush".to_owned()
            )]
        );
        let deployed = apply(
            &out,
            &Edit::Images {
                app: "blog".into(),
                images: vec![("queue".into(), "q:2".into())],
            },
        )
        .unwrap();
        let back = apply(
            &deployed,
            &Edit::Restore {
                app: "blog".into(),
                from: FLEET.into(),
            },
        )
        .unwrap();
        assert_eq!(app_text(&back, "blog"), app_text(FLEET, "blog"));
        assert_eq!(app_text(&back, "shop"), app_text(FLEET, "shop"));
    }

    #[test]
    fn what_is_not_there_is_named() {
        let img = |app: &str, svc: &str| Edit::Images {
            app: app.into(),
            images: vec![(svc.into(), "x:1".into())],
        };
        assert_eq!(
            apply(FLEET, &img("nope", "web")),
            Err(EditError::NoApp("nope".into()))
        );
        assert_eq!(
            apply(FLEET, &img("blog", "cron")),
            Err(EditError::NoService {
                app: "blog".into(),
                service: "cron".into()
            })
        );
        assert!(matches!(
            apply("[apps", &img("blog", "web")),
            Err(EditError::Syntax(_))
        ));
        assert_eq!(
            apply(
                FLEET,
                &Edit::Restore {
                    app: "blog".into(),
                    from: "[fleet]\n".into()
                }
            ),
            Err(EditError::NothingToRestore("blog".into()))
        );
    }
}
