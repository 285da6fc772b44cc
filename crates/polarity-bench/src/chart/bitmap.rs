//! The PNG's drawing backend: plotters' bitmap backend, with text drawn here.
//!
//! plotters 0.3.7 draws `ab_glyph` text without each glyph's left side bearing (a "1" or a "," lands a
//! pixel or two left of its place and leaves a gap after it: "SmolLM2-1 35M") and puts the baseline half
//! the font size under the anchor, so text anchored at its top pokes out above its box. This backend
//! places every glyph at its outline's bounds, the baseline one ascent under the top of the line, and
//! measures text the same way; everything else is the bitmap backend's own drawing. A style's size `s`
//! is drawn at an em of `s / 1.24` pixels, the `font-size` the SVG backend writes for it, so both files
//! show text at the same size.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use plotters::prelude::BitMapBackend;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind};

type BitmapError = <BitMapBackend<'static> as DrawingBackend>::ErrorType;
type DrawResult = Result<(), DrawingErrorKind<BitmapError>>;

/// [`BitMapBackend`] with text in one font, laid out with its real metrics.
pub(super) struct TextBitmap<'a> {
    inner: BitMapBackend<'a>,
    font: FontRef<'static>,
}

impl<'a> TextBitmap<'a> {
    /// Draws into `inner` with `font` for all text (whatever family a style asks for).
    pub(super) fn new(inner: BitMapBackend<'a>, font: FontRef<'static>) -> Self {
        Self { inner, font }
    }

    /// The glyph scale of a style's size: an em of `size / 1.24` pixels, as plotters-svg's `font-size`.
    fn scale(&self, size: f64) -> PxScale {
        let em = (size / 1.24) as f32;
        // ab_glyph's scale is the ascent-to-descent height in pixels.
        let height_per_em = self.font.units_per_em().map_or(1.0, |units| self.font.height_unscaled() / units);
        PxScale::from(em * height_per_em)
    }

    /// Width (pen advance, kerning included) and height (ascent to descent) of `text` at a style's `size`.
    fn measure(&self, text: &str, size: f64) -> (i32, i32) {
        let font = self.font.as_scaled(self.scale(size));
        let mut width = 0.0f32;
        let mut previous = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(previous) = previous {
                width += font.kern(previous, id);
            }
            width += font.h_advance(id);
            previous = Some(id);
        }
        (width.ceil() as i32, (font.ascent() - font.descent()).ceil() as i32)
    }
}

impl DrawingBackend for TextBitmap<'_> {
    type ErrorType = BitmapError;

    fn get_size(&self) -> (u32, u32) {
        self.inner.get_size()
    }

    fn ensure_prepared(&mut self) -> DrawResult {
        self.inner.ensure_prepared()
    }

    fn present(&mut self) -> DrawResult {
        self.inner.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> DrawResult {
        self.inner.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> DrawResult {
        self.inner.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> DrawResult {
        self.inner.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(&mut self, path: I, style: &S) -> DrawResult {
        self.inner.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(&mut self, center: BackendCoord, radius: u32, style: &S, fill: bool) -> DrawResult {
        self.inner.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> DrawResult {
        self.inner.fill_polygon(vert, style)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, (iw, ih): (u32, u32), src: &[u8]) -> DrawResult {
        self.inner.blit_bitmap(pos, (iw, ih), src)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        let (width, height) = self.measure(text, style.size());
        Ok((width.max(0) as u32, height.max(0) as u32))
    }

    fn draw_text<S: BackendTextStyle>(&mut self, text: &str, style: &S, pos: BackendCoord) -> DrawResult {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let (width, height) = self.measure(text, style.size());
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Center => -width / 2,
            HPos::Right => -width,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (canvas_width, canvas_height) = self.get_size();
        let font = self.font.as_scaled(self.scale(style.size()));
        let mut pen = 0.0f32;
        let mut previous = None;
        let mut coverage = Vec::new();
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(previous) = previous {
                pen += font.kern(previous, id);
            }
            previous = Some(id);
            let glyph = id.with_scale_and_position(font.scale(), point(pen, font.ascent()));
            pen += font.h_advance(id);
            let Some(outline) = font.outline_glyph(glyph) else { continue };
            let bounds = outline.px_bounds();
            let (left, top) = (bounds.min.x as i32, bounds.min.y as i32);
            coverage.clear();
            outline.draw(|x, y, c| coverage.push((left + x as i32, top + y as i32, c)));
            for &(x, y, c) in &coverage {
                if c <= 0.0 {
                    continue;
                }
                let (x, y) = transform.transform(x + dx, y + dy);
                let (x, y) = (pos.0 + x, pos.1 + y);
                if x >= 0 && y >= 0 && (x as u32) < canvas_width && (y as u32) < canvas_height {
                    let alpha = color.alpha * f64::from(c.min(1.0));
                    self.inner.draw_pixel((x, y), BackendColor { alpha, rgb: color.rgb })?;
                }
            }
        }
        Ok(())
    }
}
