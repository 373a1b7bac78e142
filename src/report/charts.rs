//! The HTML report's charts, drawn as SVG text with `plotters` (SVG backend only).
//!
//! `plotters` is built without its font features: the SVG backend writes text as `<text>`
//! elements that the browser lays out with its own fonts, and plotters only estimates text
//! sizes for the layout (its "naive" font module), so no system font or font library is
//! needed at build or run time. Rendering only: no I/O.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::ReportError;
use super::day::HOURS;
use super::figures::{Channel, Report};

pub const SUCCESS_TITLE: &str = "Success rate per channel per hour (%)";
pub const LATENCY_TITLE: &str = "Latency p95 per channel per hour (ms)";
pub const SHARE_TITLE: &str = "Traffic share per channel over the day (%)";

const SIZE: (u32, u32) = (900, 360);
/// Width of the key panel: room for a swatch and a name of about 14 characters.
const KEY_WIDTH: u32 = 140;
/// Okabe and Ito's colour-blind-safe palette (Color Universal Design, 2008), black last.
const COLOURS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

type Drawn = Result<(), Box<dyn std::error::Error>>;

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The three charts, each a complete `<svg>` element.
pub fn all(report: &Report) -> Result<Vec<String>, ReportError> {
    let channels = &report.channels;
    Ok(vec![
        svg(SUCCESS_TITLE, channels, |area| success(area, channels))?,
        svg(LATENCY_TITLE, channels, |area| latency(area, channels))?,
        svg(SHARE_TITLE, channels, |area| share(area, channels))?,
    ])
}

/// One chart: the plot on the left, the channels' key in a panel on its right, where it can
/// never hide a line.
fn svg(
    title: &'static str,
    channels: &[Channel],
    draw: impl FnOnce(&Area<'_>) -> Drawn,
) -> Result<String, ReportError> {
    let mut text = String::new();
    let drawn = {
        let area = SVGBackend::with_string(&mut text, SIZE).into_drawing_area();
        let (plot, panel) = area.split_horizontally(SIZE.0 - KEY_WIDTH);
        area.fill(&WHITE)
            .map_err(Into::into)
            .and_then(|()| draw(&plot))
            .and_then(|()| key(&panel, channels))
            .and_then(|()| area.present().map_err(Into::into))
    };
    drawn.map_err(|e| ReportError::Chart {
        title,
        reason: e.to_string(),
    })?;
    Ok(text)
}

fn key(panel: &Area<'_>, channels: &[Channel]) -> Drawn {
    for (index, channel) in channels.iter().enumerate() {
        let y = 50 + 24 * index as i32;
        panel.draw(&Rectangle::new(
            [(6, y - 6), (22, y + 6)],
            colour(index).filled(),
        ))?;
        let style = ("sans-serif", 15).into_font().color(&BLACK);
        panel.draw(&Text::new(channel.name.as_str(), (30, y - 8), style))?;
    }
    Ok(())
}

fn colour(index: usize) -> RGBColor {
    COLOURS[index % COLOURS.len()]
}

/// Points are drawn in the middle of their hour.
fn mid(hour: usize) -> f64 {
    hour as f64 + 0.5
}

fn hour_label(x: &f64) -> String {
    format!("{:02}:00", *x as u32)
}

fn success(area: &Area<'_>, channels: &[Channel]) -> Drawn {
    let rates: Vec<Vec<(f64, f64)>> = channels.iter().map(hourly_rates).collect();
    let lowest = rates
        .iter()
        .flatten()
        .map(|&(_, r)| r)
        .fold(100.0, f64::min);
    // From ten points below the lowest rate, in whole tens: the lines use the height.
    let floor = ((lowest - 10.0) / 10.0).floor().max(0.0) * 10.0;
    let mut chart = ChartBuilder::on(area)
        .caption(SUCCESS_TITLE, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..HOURS as f64, floor..100f64)?;
    mesh(&mut chart)?;
    for (index, points) in rates.into_iter().enumerate() {
        line(&mut chart, points, colour(index))?;
    }
    Ok(())
}

/// (hour, success rate in %) for the hours with attempts.
fn hourly_rates(channel: &Channel) -> Vec<(f64, f64)> {
    let hours = channel.hours.iter().enumerate();
    hours
        .filter(|(_, figures)| figures.attempts > 0)
        .map(|(h, f)| (mid(h), f.succeeded as f64 * 100.0 / f.attempts as f64))
        .collect()
}

fn latency(area: &Area<'_>, channels: &[Channel]) -> Drawn {
    let top = channels
        .iter()
        .flat_map(|c| c.hours.iter().filter_map(|h| h.p95_ms))
        .max()
        .unwrap_or(0)
        .max(10) as f64
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(LATENCY_TITLE, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..HOURS as f64, 0f64..top)?;
    mesh(&mut chart)?;
    for (index, channel) in channels.iter().enumerate() {
        let points = channel.hours.iter().enumerate();
        let points = points.filter_map(|(h, figures)| Some((mid(h), figures.p95_ms? as f64)));
        line(&mut chart, points.collect(), colour(index))?;
    }
    Ok(())
}

/// Stacked areas: each channel's band is its share of the hour's attempts. Drawn from the
/// top band down, each filled to zero, so the later (lower) ones cover the earlier ones.
fn share(area: &Area<'_>, channels: &[Channel]) -> Drawn {
    let mut chart = ChartBuilder::on(area)
        .caption(SHARE_TITLE, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..HOURS as f64, 0f64..100f64)?;
    mesh(&mut chart)?;
    let stacked = stacked_shares(channels);
    for (index, tops) in stacked.iter().enumerate().rev() {
        let points: Vec<(f64, f64)> = (0..HOURS).map(|h| (mid(h), tops[h])).collect();
        // Opaque: a translucent band would blend with the one drawn under it.
        let fill = colour(index).filled();
        chart.draw_series(AreaSeries::new(points, 0.0, fill).border_style(WHITE))?;
    }
    Ok(())
}

/// Per channel and hour: the top of the channel's band, in percent of the hour's attempts
/// (the cumulative share of this channel and those before it).
fn stacked_shares(channels: &[Channel]) -> Vec<[f64; HOURS]> {
    let mut totals = [0u64; HOURS];
    for channel in channels {
        for (h, figures) in channel.hours.iter().enumerate() {
            totals[h] += figures.attempts;
        }
    }
    let mut running = [0u64; HOURS];
    channels
        .iter()
        .map(|channel| {
            std::array::from_fn(|h| {
                running[h] += channel.hours[h].attempts;
                if totals[h] == 0 {
                    0.0
                } else {
                    running[h] as f64 * 100.0 / totals[h] as f64
                }
            })
        })
        .collect()
}

/// Axes with a label every two hours and a light grid.
fn mesh<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Drawn {
    chart
        .configure_mesh()
        .x_labels(13)
        .x_label_formatter(&hour_label)
        .y_label_formatter(&|y: &f64| format!("{y:.0}"))
        .label_style(("sans-serif", 13))
        .light_line_style(RGBColor(242, 242, 242))
        .bold_line_style(RGBColor(215, 215, 215))
        .draw()?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn line<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, points: Vec<(f64, f64)>, colour: RGBColor) -> Drawn {
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))?;
    chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?;
    Ok(())
}
